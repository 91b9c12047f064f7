<?php
// One pinned version for the whole request: the price and the promotion always agree.
$client = new Lockstep\Client();
$s = $client->snapshot();
$key = $_GET['key'] ?? 'price:apple';
$value = $s->get($key);
header('Content-Type: application/json');
if ($value === null) {
    http_response_code(404);
}
echo json_encode([
    'key' => $key,
    'value' => $value,
    'version' => $s->version(),
    'pid' => getmypid(),
    'last_activation_us' => $client->stats()['last_activation_us'],
]), "\n";
