--TEST--
lockstep: an https:// data server verified against lockstep.ca_file (a test CA, a TLS proxy in front of a real data server)
--EXTENSIONS--
lockstep
--INI--
lockstep.ca_file=/tmp/lockstep-phpt-tls/farm-ca.pem
--FILE--
<?php
require __DIR__ . '/server.inc';
[$proc, $url] = lockstep_start_server();
lockstep_put($url, 'price', '8');
$dir = '/tmp/lockstep-phpt-tls';
exec('rm -rf ' . escapeshellarg($dir));
$proxy_script = __DIR__ . '/../../../bindings/python/tests/tls_proxy.py';
$tls = proc_open(['python3', $proxy_script, $dir, $url],
                 [1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'w']], $pipes);
register_shutdown_function(function () use ($tls) { proc_terminate($tls, 9); });
$https = trim((string)fgets($pipes[1]));
var_dump(str_starts_with($https, 'https://127.0.0.1:'));
$c = new Lockstep\Client(['url' => $https, 'cache_dir' => '', 'bootstrap_wait_ms' => 10000]);
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
