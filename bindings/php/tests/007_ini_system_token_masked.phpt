--TEST--
lockstep: url, token and ca_file are system settings ini_set() cannot change, and phpinfo() masks the token
--EXTENSIONS--
lockstep
--INI--
lockstep.token=phpt-secret-read-token
lockstep.url=http://127.0.0.1:9
--FILE--
<?php
var_dump(ini_set('lockstep.token', 'other'));
var_dump(ini_set('lockstep.url', 'http://127.0.0.2:1'));
var_dump(ini_set('lockstep.ca_file', '/tmp/other.pem'));
var_dump(ini_get('lockstep.token') === 'phpt-secret-read-token', ini_get('lockstep.url'));
ob_start();
phpinfo(INFO_MODULES);
$info = ob_get_clean();
var_dump(str_contains($info, 'phpt-secret-read-token'));
var_dump((bool)preg_match('/^lockstep\.token => \*{8} => \*{8}$/m', $info));
var_dump((bool)preg_match('/^lockstep\.url => http:\/\/127\.0\.0\.1:9 => /m', $info));
?>
--EXPECT--
bool(false)
bool(false)
bool(false)
bool(true)
string(18) "http://127.0.0.1:9"
bool(false)
bool(true)
bool(true)
