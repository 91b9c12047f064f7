<?php
// One pinned version for the whole request: the price and the promotion always agree.
$client = new Lockstep\Client();
$s = $client->snapshot();
$key = $_GET['key'] ?? 'price:apple';
$value = $s->get($key);
$stats = $client->stats();
header('Content-Type: application/json');
if ($value === null) {
    http_response_code(404);
}
echo json_encode([
    'key' => $key,
    'value' => $value,
    'version' => $s->version(),
    'pid' => getmypid(),
    'last_activation_us' => $stats['last_activation_us'],
    // 1: this process's data came from the host cache, not yet confirmed by a check-in
    'unconfirmed' => $stats['unconfirmed'] ?? null,
    'host_role' => $stats['host_role'] ?? null,
    // from the request's start to the read: a worker's first request includes opening
    'read_ms' => (microtime(true) - $_SERVER['REQUEST_TIME_FLOAT']) * 1000,
]), "\n";
