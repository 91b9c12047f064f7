--TEST--
lockstep: get, versions, stats and a snapshot against a real data server
--EXTENSIONS--
lockstep
--FILE--
<?php
require __DIR__ . '/server.inc';
[$proc, $url] = lockstep_start_server();
lockstep_put($url, 'blob', str_repeat('x', 5000));
lockstep_put($url, 'price:apple', '1.25'); // last, so waiting for it waits for both
lockstep_wait_active($url, 'price:apple', '1.25');
// lockstep.url is PHP_INI_SYSTEM: request code names its data server in the options.
$opts = ['url' => $url, 'name' => 'phpt'];
$c = new Lockstep\Client($opts);
var_dump($c->get('price:apple'));
var_dump($c->get('missing'));
var_dump(strlen($c->get('blob')));
var_dump($c->activeVersion() >= 2);
$stats = $c->stats();
var_dump($stats['active_version'] === $c->activeVersion(), $stats['lagging'], $stats['checkins'] >= 1);
// This process alone on its host cache leads it, and a check-in has confirmed its data.
var_dump($stats['host_role'], $stats['unconfirmed'], $stats['cache_failures']);

$s = $c->snapshot();
$v = $s->version();
lockstep_put($url, 'price:apple', '0.99');
$deadline = microtime(true) + 10;
while ($c->get('price:apple') !== '0.99' && microtime(true) < $deadline) {
    usleep(10000);
}
var_dump($c->get('price:apple'));
// The snapshot still reads the version it pinned.
var_dump($s->get('price:apple'), $s->version() === $v, $c->activeVersion() > $v);
unset($s);

try {
    $c->get('');
} catch (ValueError $e) {
    echo $e->getMessage(), "\n";
}
// A second client shares the process's handle.
$d = new Lockstep\Client($opts);
var_dump($d->activeVersion() === $c->activeVersion());
?>
--EXPECT--
string(4) "1.25"
NULL
int(5000)
bool(true)
bool(true)
bool(false)
bool(true)
int(1)
bool(false)
int(0)
string(4) "0.99"
string(4) "1.25"
bool(true)
bool(true)
Lockstep\Client::get(): Argument #1 ($key) must not be empty
bool(true)
