--TEST--
lockstep: new Lockstep\Client([...]) overrides the ini settings; get() takes a default of any type; bad options are ValueErrors
--EXTENSIONS--
lockstep
--INI--
lockstep.url=http://127.0.0.1:9
lockstep.bootstrap_wait_ms=200
--FILE--
<?php
require __DIR__ . '/server.inc';
[$proc, $url] = lockstep_start_server();
lockstep_put($url, 'price:apple', '1.25');
lockstep_wait_active($url, 'price:apple', '1.25');

// The ini setting points nowhere: only the array's url can reach the data server.
try {
    new Lockstep\Client();
} catch (Lockstep\Exception $e) {
    echo "ini: ", $e->getCode(), "\n";
}
$c = new Lockstep\Client(['url' => $url, 'name' => 'phpt-array', 'cache_dir' => '',
                          'bootstrap_wait_ms' => 5000]);
var_dump($c->get('price:apple'), $c->get('missing'), $c->get('missing', 'fallback'),
         $c->get('price:apple', 'fallback'));
var_dump($c->stats()['host_role']); // cache_dir '' turned the host cache off
$s = $c->snapshot();
var_dump($s->get('missing', 'dflt'), $s->get('price:apple', 'dflt'));
// $default comes back as given, whatever its type: get('k', 0) is 0, not "0".
var_dump($c->get('missing', 0), $c->get('missing', false), $c->get('missing', ['a']),
         $s->get('missing', 0), $c->get('price:apple', 0));

// The same settings share the handle; other settings get their own.
$d = new Lockstep\Client(['url' => $url, 'name' => 'phpt-array', 'cache_dir' => '',
                          'bootstrap_wait_ms' => 5000]);
var_dump($d->activeVersion() === $c->activeVersion());

foreach ([['colour' => 'blue'], ['url' => "$url;token=x"], ['bootstrap_wait_ms' => 'soon'],
          ['token' => 42], [0 => $url]] as $bad) {
    try {
        new Lockstep\Client($bad);
    } catch (ValueError $e) {
        echo $e->getMessage(), "\n";
    }
}
try {
    new Lockstep\Client(['url' => 'ftp://nowhere']);
} catch (Lockstep\Exception $e) {
    echo $e->getCode(), "\n";
}
?>
--EXPECT--
ini: 7
string(4) "1.25"
NULL
string(8) "fallback"
string(4) "1.25"
int(0)
string(4) "dflt"
string(4) "1.25"
int(0)
bool(false)
array(1) {
  [0]=>
  string(1) "a"
}
int(0)
string(4) "1.25"
bool(true)
Lockstep\Client::__construct(): Argument #1 ($options) has an unknown option "colour" (known: url, token, name, bootstrap_wait_ms, allow_not_ready, cache_dir)
Lockstep\Client::__construct(): Argument #1 ($options) option "url" must not contain ';', a newline or NUL
Lockstep\Client::__construct(): Argument #1 ($options) option "bootstrap_wait_ms" must be an int >= 0
Lockstep\Client::__construct(): Argument #1 ($options) option "token" must be a string
Lockstep\Client::__construct(): Argument #1 ($options) must be an array keyed by option name
6
