#ifndef PHP_LOCKSTEP_H
#define PHP_LOCKSTEP_H

extern zend_module_entry lockstep_module_entry;
#define phpext_lockstep_ptr &lockstep_module_entry

#define PHP_LOCKSTEP_VERSION "0.1.0"

#endif
