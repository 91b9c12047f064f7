--TEST--
lockstep: a data server serving HTTPS itself (serve --tls-cert/--tls-key), verified against lockstep.ca_file (a test CA)
--EXTENSIONS--
lockstep
--INI--
lockstep.ca_file=/tmp/lockstep-phpt-tls-009/farm-ca.pem
--FILE--
<?php
require __DIR__ . '/server.inc';
$dir = '/tmp/lockstep-phpt-tls-009';
lockstep_make_pki($dir, 'farm');
[$proc, $url] = lockstep_start_server('200ms', [],
    ["$dir/farm-server.pem", "$dir/farm-server.key", "$dir/farm-ca.pem"]);
var_dump(str_starts_with($url, 'https://127.0.0.1:'));
lockstep_put($url, 'price', '8');
$c = new Lockstep\Client(['url' => $url, 'cache_dir' => '', 'bootstrap_wait_ms' => 10000]);
$deadline = microtime(true) + 10;
while ($c->get('price') !== '8' && microtime(true) < $deadline) {
    usleep(10000);
}
var_dump($c->get('price'), $c->stats()['last_failure']);
?>
--EXPECT--
bool(true)
string(1) "8"
int(0)
