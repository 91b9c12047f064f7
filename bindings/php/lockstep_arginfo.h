/* This is a generated file, edit the .stub.php file instead.
 * Stub hash: 00e3896c78fd28dd34db85d26ab0ca73e082aed3 */

ZEND_BEGIN_ARG_INFO_EX(arginfo_class_Lockstep_Client___construct, 0, 0, 0)
	ZEND_ARG_TYPE_INFO_WITH_DEFAULT_VALUE(0, options, IS_ARRAY, 0, "[]")
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_class_Lockstep_Client_get, 0, 1, IS_MIXED, 0)
	ZEND_ARG_TYPE_INFO(0, key, IS_STRING, 0)
	ZEND_ARG_TYPE_INFO_WITH_DEFAULT_VALUE(0, default, IS_MIXED, 0, "null")
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_class_Lockstep_Client_activeVersion, 0, 0, IS_LONG, 0)
ZEND_END_ARG_INFO()

#define arginfo_class_Lockstep_Client_stagedVersion arginfo_class_Lockstep_Client_activeVersion

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_class_Lockstep_Client_stats, 0, 0, IS_ARRAY, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_OBJ_INFO_EX(arginfo_class_Lockstep_Client_snapshot, 0, 0, Lockstep\\Snapshot, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_INFO_EX(arginfo_class_Lockstep_Snapshot___construct, 0, 0, 0)
ZEND_END_ARG_INFO()

#define arginfo_class_Lockstep_Snapshot_get arginfo_class_Lockstep_Client_get

#define arginfo_class_Lockstep_Snapshot_version arginfo_class_Lockstep_Client_activeVersion


ZEND_METHOD(Lockstep_Client, __construct);
ZEND_METHOD(Lockstep_Client, get);
ZEND_METHOD(Lockstep_Client, activeVersion);
ZEND_METHOD(Lockstep_Client, stagedVersion);
ZEND_METHOD(Lockstep_Client, stats);
ZEND_METHOD(Lockstep_Client, snapshot);
ZEND_METHOD(Lockstep_Snapshot, __construct);
ZEND_METHOD(Lockstep_Snapshot, get);
ZEND_METHOD(Lockstep_Snapshot, version);


static const zend_function_entry class_Lockstep_Client_methods[] = {
	ZEND_ME(Lockstep_Client, __construct, arginfo_class_Lockstep_Client___construct, ZEND_ACC_PUBLIC)
	ZEND_ME(Lockstep_Client, get, arginfo_class_Lockstep_Client_get, ZEND_ACC_PUBLIC)
	ZEND_ME(Lockstep_Client, activeVersion, arginfo_class_Lockstep_Client_activeVersion, ZEND_ACC_PUBLIC)
	ZEND_ME(Lockstep_Client, stagedVersion, arginfo_class_Lockstep_Client_stagedVersion, ZEND_ACC_PUBLIC)
	ZEND_ME(Lockstep_Client, stats, arginfo_class_Lockstep_Client_stats, ZEND_ACC_PUBLIC)
	ZEND_ME(Lockstep_Client, snapshot, arginfo_class_Lockstep_Client_snapshot, ZEND_ACC_PUBLIC)
	ZEND_FE_END
};


static const zend_function_entry class_Lockstep_Snapshot_methods[] = {
	ZEND_ME(Lockstep_Snapshot, __construct, arginfo_class_Lockstep_Snapshot___construct, ZEND_ACC_PRIVATE)
	ZEND_ME(Lockstep_Snapshot, get, arginfo_class_Lockstep_Snapshot_get, ZEND_ACC_PUBLIC)
	ZEND_ME(Lockstep_Snapshot, version, arginfo_class_Lockstep_Snapshot_version, ZEND_ACC_PUBLIC)
	ZEND_FE_END
};


static const zend_function_entry class_Lockstep_Exception_methods[] = {
	ZEND_FE_END
};


static const zend_function_entry class_Lockstep_UnauthorizedException_methods[] = {
	ZEND_FE_END
};


static const zend_function_entry class_Lockstep_UnreachableException_methods[] = {
	ZEND_FE_END
};


static const zend_function_entry class_Lockstep_NotReadyException_methods[] = {
	ZEND_FE_END
};

static zend_class_entry *register_class_Lockstep_Client(void)
{
	zend_class_entry ce, *class_entry;

	INIT_NS_CLASS_ENTRY(ce, "Lockstep", "Client", class_Lockstep_Client_methods);
	class_entry = zend_register_internal_class_ex(&ce, NULL);
	class_entry->ce_flags |= ZEND_ACC_FINAL|ZEND_ACC_NO_DYNAMIC_PROPERTIES|ZEND_ACC_NOT_SERIALIZABLE;

	return class_entry;
}

static zend_class_entry *register_class_Lockstep_Snapshot(void)
{
	zend_class_entry ce, *class_entry;

	INIT_NS_CLASS_ENTRY(ce, "Lockstep", "Snapshot", class_Lockstep_Snapshot_methods);
	class_entry = zend_register_internal_class_ex(&ce, NULL);
	class_entry->ce_flags |= ZEND_ACC_FINAL|ZEND_ACC_NO_DYNAMIC_PROPERTIES|ZEND_ACC_NOT_SERIALIZABLE;

	return class_entry;
}

static zend_class_entry *register_class_Lockstep_Exception(zend_class_entry *class_entry_RuntimeException)
{
	zend_class_entry ce, *class_entry;

	INIT_NS_CLASS_ENTRY(ce, "Lockstep", "Exception", class_Lockstep_Exception_methods);
	class_entry = zend_register_internal_class_ex(&ce, class_entry_RuntimeException);

	return class_entry;
}

static zend_class_entry *register_class_Lockstep_UnauthorizedException(zend_class_entry *class_entry_Lockstep_Exception)
{
	zend_class_entry ce, *class_entry;

	INIT_NS_CLASS_ENTRY(ce, "Lockstep", "UnauthorizedException", class_Lockstep_UnauthorizedException_methods);
	class_entry = zend_register_internal_class_ex(&ce, class_entry_Lockstep_Exception);

	return class_entry;
}

static zend_class_entry *register_class_Lockstep_UnreachableException(zend_class_entry *class_entry_Lockstep_Exception)
{
	zend_class_entry ce, *class_entry;

	INIT_NS_CLASS_ENTRY(ce, "Lockstep", "UnreachableException", class_Lockstep_UnreachableException_methods);
	class_entry = zend_register_internal_class_ex(&ce, class_entry_Lockstep_Exception);

	return class_entry;
}

static zend_class_entry *register_class_Lockstep_NotReadyException(zend_class_entry *class_entry_Lockstep_Exception)
{
	zend_class_entry ce, *class_entry;

	INIT_NS_CLASS_ENTRY(ce, "Lockstep", "NotReadyException", class_Lockstep_NotReadyException_methods);
	class_entry = zend_register_internal_class_ex(&ce, class_entry_Lockstep_Exception);

	return class_entry;
}
