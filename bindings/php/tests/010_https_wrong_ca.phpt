--TEST--
lockstep: a data server whose certificate another CA signed is refused: UnreachableException naming the certificate, never data
--EXTENSIONS--
lockstep
--INI--
lockstep.ca_file=/tmp/lockstep-phpt-tls-010/other-ca.pem
--FILE--
<?php
require __DIR__ . '/server.inc';
$dir = '/tmp/lockstep-phpt-tls-010';
lockstep_make_pki($dir, 'farm', 'other');
[$proc, $url] = lockstep_start_server('200ms', [],
    ["$dir/farm-server.pem", "$dir/farm-server.key", "$dir/farm-ca.pem"]);
lockstep_put($url, 'price', '9');
lockstep_wait_active($url, 'price', '9');  // it serves, to clients of the farm CA
echo "active\n";
try {
    new Lockstep\Client(['url' => $url, 'cache_dir' => '', 'bootstrap_wait_ms' => 3000]);
    echo "opened\n";
} catch (Lockstep\Exception $e) {
    echo get_class($e), ' ', $e->getCode(), ' ';
    var_dump(str_contains(strtolower($e->getMessage()), 'certificate'));
}
?>
--EXPECT--
active
Lockstep\UnreachableException 7 bool(true)
