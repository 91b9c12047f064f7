--TEST--
lockstep: the extension loads and declares its classes
--EXTENSIONS--
lockstep
--FILE--
<?php
var_dump(extension_loaded('lockstep'));
var_dump(class_exists('Lockstep\Client'), class_exists('Lockstep\Snapshot'));
var_dump(is_subclass_of('Lockstep\Exception', 'RuntimeException'));
var_dump(ini_get('lockstep.url'));
try {
    new Lockstep\Snapshot();
} catch (Error $e) {
    echo get_class($e), "\n";
}
?>
--EXPECT--
bool(true)
bool(true)
bool(true)
bool(true)
string(21) "http://127.0.0.1:7420"
Error
