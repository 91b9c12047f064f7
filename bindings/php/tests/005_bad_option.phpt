--TEST--
lockstep: a malformed url setting is an exception naming the problem
--EXTENSIONS--
lockstep
--INI--
lockstep.url=ftp://nowhere
--FILE--
<?php
try {
    (new Lockstep\Client())->get('x');
} catch (Lockstep\Exception $e) {
    echo $e->getCode(), ": ", $e->getMessage(), "\n";
}
?>
--EXPECT--
6: bad option: option 'url' wants http:// or https:// URLs separated by ',', got 'ftp://nowhere'
