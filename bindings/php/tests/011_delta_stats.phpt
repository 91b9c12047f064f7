--TEST--
lockstep: stats() counts bytes downloaded, full downloads and a delta applied for an edit
--EXTENSIONS--
lockstep
--FILE--
<?php
require __DIR__ . '/server.inc';
// A 2 s cycle: the client holds the active version when the edit is staged, so it takes the
// delta from it instead of catching up with a full download.
[$proc, $url] = lockstep_start_server('2s');
$entries = [];
for ($i = 0; $i < 2000; $i++) {
    $entries[] = ['key' => sprintf('key:%04d', $i), 'value' => "value-$i"];
}
lockstep_admin($url, '/v1/admin/import', ['entries' => $entries]);
lockstep_wait_active($url, 'key:0000', 'value-0');
$c = new Lockstep\Client(['url' => $url, 'name' => 'phpt-delta', 'cache_dir' => '']);
$first = $c->stats();
var_dump($first['full_downloads'], $first['deltas_applied'], $first['bytes_downloaded'] > 20000);
lockstep_put($url, 'key:0000', 'changed');
$deadline = microtime(true) + 30;
while ($c->get('key:0000') !== 'changed' && microtime(true) < $deadline) {
    usleep(10000);
}
var_dump($c->get('key:0000'));
$after = $c->stats();
var_dump($after['deltas_applied'], $after['full_downloads']);
// One key of 2000 changed: the delta is a sliver of the version.
$delta = $after['bytes_downloaded'] - $first['bytes_downloaded'];
var_dump($delta > 0 && $delta * 10 < $first['bytes_downloaded']);
?>
--EXPECT--
int(1)
int(0)
bool(true)
string(7) "changed"
int(1)
int(1)
bool(true)
