--TEST--
lockstep: with allow_not_ready a handle answers "not ready" until data arrives
--EXTENSIONS--
lockstep
--INI--
lockstep.url=http://127.0.0.1:9
lockstep.bootstrap_wait_ms=0
lockstep.allow_not_ready=1
--FILE--
<?php
$c = new Lockstep\Client();
var_dump($c->activeVersion());
try {
    $c->get('price');
} catch (Lockstep\Exception $e) {
    echo $e->getCode(), ": ", $e->getMessage(), "\n";
}
?>
--EXPECT--
int(0)
2: no version has arrived from the data server yet
