--TEST--
lockstep: a refused read token is Lockstep\UnauthorizedException (code 10), never unreachable
--EXTENSIONS--
lockstep
--FILE--
<?php
require __DIR__ . '/server.inc';
[$proc, $url] = lockstep_start_server('200ms', ['LOCKSTEP_READ_TOKEN' => 'phpt-read']);
lockstep_put($url, 'price', '7');
foreach (['wrong', ''] as $token) {
    try {
        new Lockstep\Client(['url' => $url, 'token' => $token, 'cache_dir' => '',
                             'bootstrap_wait_ms' => 3000]);
        echo "opened\n";
    } catch (Lockstep\Exception $e) {
        echo get_class($e), ' ', $e->getCode(), ' ';
        var_dump(str_contains($e->getMessage(), 'refused the read token'));
    }
}
$c = new Lockstep\Client(['url' => $url, 'token' => 'phpt-read', 'cache_dir' => '',
                          'bootstrap_wait_ms' => 10000]);
$deadline = microtime(true) + 10;
while ($c->get('price') !== '7' && microtime(true) < $deadline) {
    usleep(10000);
}
var_dump($c->get('price'));
try {
    new Lockstep\Client(['url' => 'http://127.0.0.1:9', 'cache_dir' => '',
                         'bootstrap_wait_ms' => 200]);
} catch (Lockstep\Exception $e) {
    echo get_class($e), ' ', $e->getCode(), "\n";
}
?>
--EXPECT--
Lockstep\UnauthorizedException 10 bool(true)
Lockstep\UnauthorizedException 10 bool(true)
string(1) "7"
Lockstep\UnreachableException 7
