--TEST--
lockstep: an unreachable data server is an exception with the library's message
--EXTENSIONS--
lockstep
--INI--
lockstep.url=http://127.0.0.1:9
lockstep.bootstrap_wait_ms=200
--FILE--
<?php
try {
    new Lockstep\Client();
} catch (Lockstep\Exception $e) {
    echo $e->getCode(), "\n";
    var_dump(str_contains($e->getMessage(), 'data server unreachable'));
    var_dump(str_contains($e->getMessage(), 'Connection refused'));
}
?>
--EXPECT--
7
bool(true)
bool(true)
