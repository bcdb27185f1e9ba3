#!/bin/bash
# Build QEMU 7.2.0 with the SIMPLE trace backend (Debian's QEMU has the log backend only), for the set
# traces/raw-none-simple. Root on Debian 12; about 10 minutes on 2 cores. Prints the directory to put first in PATH.
#
#   traces/lab/build-qemu-simple.sh [WORKDIR]        default WORKDIR /var/tmp/qemu-simple
set -euo pipefail
W=${1:-/var/tmp/qemu-simple}
mkdir -p "$W" && cd "$W"
if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/debian-src.sources
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ninja-build meson libglib2.0-dev libpixman-1-dev flex bison \
  pkg-config zlib1g-dev python3-venv dpkg-dev libfdt-dev libcap-ng-dev libattr1-dev >/dev/null
[ -d qemu-7.2.0 ] || { apt-get source -qq --download-only qemu; tar xf qemu_7.2+dfsg.orig.tar.xz; }
cd qemu-7.2.0
# the dfsg tarball has no firmware blobs: do not unpack the edk2 images (the system's firmware is used instead)
sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' meson.build
mkdir -p build && cd build
../configure --target-list=x86_64-softmmu --enable-trace-backends=simple --without-default-features --disable-docs \
  --disable-werror --enable-tcg --enable-fdt=system --disable-install-blobs --enable-virtfs --enable-attr --enable-cap-ng
ninja qemu-system-x86_64 trace/trace-events-all
mkdir -p "$W/bin"
cat > "$W/bin/qemu-system-x86_64" <<EOS
#!/bin/sh
# QEMU 7.2.0 with the simple trace backend; firmware from the system's QEMU
exec $PWD/qemu-system-x86_64 -L /usr/share/qemu -L /usr/share/seabios "\$@"
EOS
chmod +x "$W/bin/qemu-system-x86_64"
echo "$W/bin"
