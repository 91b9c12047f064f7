--TEST--
lockstep: lockstep.blob_url reaches the library (a malformed one is its bad-option exception), and ini_set() cannot change it
--EXTENSIONS--
lockstep
--INI--
lockstep.url=http://127.0.0.1:9
lockstep.blob_url=cache.example:8080
--FILE--
<?php
var_dump(ini_set('lockstep.blob_url', 'http://other:1'));
try {
    (new Lockstep\Client())->get('x');
} catch (Lockstep\Exception $e) {
    echo $e->getCode(), ": ", $e->getMessage(), "\n";
}
?>
--EXPECT--
bool(false)
6: bad option: option 'blob_url' wants one http:// or https:// URL, got 'cache.example:8080'
