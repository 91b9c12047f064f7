dnl Lockstep PHP extension: a wrapper over liblockstep's C ABI.
dnl   Installed library (scripts/install.sh or the .deb), found through pkg-config:
dnl     phpize && ./configure && make && make install       (or: pie install, composer.json)
dnl   A Lockstep checkout (development; links target/release or target/debug with a RUNPATH):
dnl     phpize && ./configure --with-lockstep=/path/to/checkout && make
dnl On by default, so that a plain ./configure (PIE's) builds it against the installed library.
PHP_ARG_WITH([lockstep],
  [for Lockstep support],
  [AS_HELP_STRING([--with-lockstep[=DIR]],
    [Lockstep: the installed liblockstep through pkg-config (default), or a checkout DIR
     (include/lockstep.h and target/release or target/debug/liblockstep.so)])],
  [yes])

if test "$PHP_LOCKSTEP" != "no"; then
  if test "$PHP_LOCKSTEP" = "yes"; then
    dnl The installed library. An RUNPATH only for a prefix the loader does not search.
    AC_PATH_PROG(PKG_CONFIG, pkg-config, no)
    if test "$PKG_CONFIG" = "no"; then
      AC_MSG_ERROR([pkg-config not found: install it (apt-get install pkg-config)])
    fi
    if ! $PKG_CONFIG --exists lockstep; then
      AC_MSG_ERROR([liblockstep not found by pkg-config: install Lockstep (scripts/install.sh --prefix DIR, or the lockstep .deb) and set PKG_CONFIG_PATH=DIR/lib/pkgconfig, or give --with-lockstep=/path/to/checkout])
    fi
    LOCKSTEP_CFLAGS=`$PKG_CONFIG --cflags lockstep`
    LOCKSTEP_LIBS=`$PKG_CONFIG --libs lockstep`
    LOCKSTEP_PC_LIBDIR=`$PKG_CONFIG --variable=libdir lockstep`
    AC_MSG_RESULT([using liblockstep `$PKG_CONFIG --modversion lockstep` from $LOCKSTEP_PC_LIBDIR])
    PHP_EVAL_INCLINE($LOCKSTEP_CFLAGS)
    LOCKSTEP_SHARED_LIBADD="$LOCKSTEP_LIBS"
    case "$LOCKSTEP_PC_LIBDIR" in
      /lib|/lib64|/usr/lib|/usr/lib64|/usr/lib/*-linux-gnu) ;;
      *) LOCKSTEP_SHARED_LIBADD="-Wl,-rpath,$LOCKSTEP_PC_LIBDIR $LOCKSTEP_SHARED_LIBADD" ;;
    esac
  else
    LOCKSTEP_DIR="$PHP_LOCKSTEP"
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
  fi
  PHP_SUBST(LOCKSTEP_SHARED_LIBADD)
  PHP_NEW_EXTENSION(lockstep, lockstep.c, $ext_shared)
fi
