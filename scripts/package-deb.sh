#!/usr/bin/env bash
# Builds the Debian package target/debian/lockstep_<version>_<arch>.deb with dpkg-deb:
#   /usr/bin/lockstep                                   data server and CLI
#   /usr/lib/<multiarch>/liblockstep.so.<abi>.<version> and its .so.<abi> and .so links
#   /usr/include/lockstep.h, /usr/lib/<multiarch>/pkgconfig/lockstep.pc
#   /usr/lib/systemd/system/lockstep.service            hardened, Type=notify
#   /usr/lib/sysusers.d/lockstep.conf                   its user
#   /etc/default/lockstep                               its settings (a conffile)
#   /usr/share/doc/lockstep/                            README and copyright
#
#   scripts/package-deb.sh [--profile P] [--no-build]
#     (release by default; CI uses debug, built already; --no-build packages what is built)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${LOCKSTEP_CARGO_PROFILE:-release}
build=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --no-build) build=(--no-build); shift ;;
    *) echo "package-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v dpkg-deb >/dev/null || { echo "package-deb.sh: dpkg-deb not found (Debian's dpkg)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
out=target/debian
root="$out/lockstep_${version}_${arch}"
rm -rf "$root"
mkdir -p "$root/DEBIAN"

./scripts/install.sh --prefix /usr --libdir "/usr/lib/$multiarch" --destdir "$root" --profile "$profile" \
  "${build[@]}"
# Packages ship stripped binaries (as dh_strip does); the build keeps its debug information.
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  "$root/usr/bin/lockstep" "$root/usr/lib/$multiarch"/liblockstep.so.*.*

install -D -m 0644 packaging/lockstep.service "$root/usr/lib/systemd/system/lockstep.service"
install -D -m 0644 packaging/lockstep.sysusers "$root/usr/lib/sysusers.d/lockstep.conf"
install -D -m 0644 packaging/lockstep.default "$root/etc/default/lockstep"
install -D -m 0644 README.md "$root/usr/share/doc/lockstep/README.md"
printf 'Lockstep\nLicense: %s\n' "$(sed -n 's/^license = "\(.*\)"$/\1/p' Cargo.toml | head -1)" \
  > "$root/usr/share/doc/lockstep/copyright"
chmod 0644 "$root/usr/share/doc/lockstep/copyright"

# What the binaries need of glibc decides the dependency: the newest GLIBC_2.N symbol.
glibc=$(objdump -T "$root/usr/bin/lockstep" "$root/usr/lib/$multiarch"/liblockstep.so.*.* \
  | grep -o 'GLIBC_2\.[0-9]*' | sed 's/GLIBC_2\.//' | sort -n | tail -1)
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@GLIBC@/$glibc/" \
  packaging/debian/control.in > "$root/DEBIAN/control"
install -m 0755 packaging/debian/postinst packaging/debian/postrm "$root/DEBIAN/"
install -m 0644 packaging/debian/triggers packaging/debian/conffiles "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)

deb="$out/lockstep_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "built $deb"
