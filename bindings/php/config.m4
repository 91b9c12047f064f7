dnl Lockstep PHP extension: a wrapper over liblockstep.so's C ABI.
dnl   phpize && ./configure --with-lockstep=/path/to/lockstep/checkout && make && make test
PHP_ARG_WITH([lockstep],
  [for Lockstep support],
  [AS_HELP_STRING([--with-lockstep=DIR],
    [Lockstep checkout (include/lockstep.h and target/release or target/debug/liblockstep.so)])])

if test "$PHP_LOCKSTEP" != "no"; then
  LOCKSTEP_DIR="$PHP_LOCKSTEP"
  if test "$LOCKSTEP_DIR" = "yes"; then
    LOCKSTEP_DIR=`cd "$srcdir/../.." && pwd`
  fi
  if test ! -f "$LOCKSTEP_DIR/include/lockstep.h"; then
    AC_MSG_ERROR([lockstep.h not found in $LOCKSTEP_DIR/include])
  fi
  LOCKSTEP_LIBDIR="$LOCKSTEP_LIBDIR"
  if test -z "$LOCKSTEP_LIBDIR"; then
    for profile in release debug; do
      if test -f "$LOCKSTEP_DIR/target/$profile/liblockstep.so"; then
        LOCKSTEP_LIBDIR="$LOCKSTEP_DIR/target/$profile"
        break
      fi
    done
  fi
  if test -z "$LOCKSTEP_LIBDIR"; then
    AC_MSG_ERROR([liblockstep.so not found: run cargo build --release -p lockstep, or set LOCKSTEP_LIBDIR])
  fi
  AC_MSG_RESULT([using liblockstep.so from $LOCKSTEP_LIBDIR])
  PHP_ADD_INCLUDE($LOCKSTEP_DIR/include)
  PHP_ADD_LIBRARY_WITH_PATH(lockstep, $LOCKSTEP_LIBDIR, LOCKSTEP_SHARED_LIBADD)
  PHP_SUBST(LOCKSTEP_SHARED_LIBADD)
  PHP_NEW_EXTENSION(lockstep, lockstep.c, $ext_shared)
fi
