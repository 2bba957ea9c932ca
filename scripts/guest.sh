#!/usr/bin/env bash
# Builds the small bootable guest the VM tests run under QEMU/KVM, from
# Debian's packages only: the cloud kernel image (virtio drivers as modules)
# and a busybox initramfs whose /init loads virtio-net, configures the
# addresses given on the kernel command line and then reads shell commands
# from the serial console (see tests/src/guest.rs for the protocol).
#   scripts/guest.sh [DIR]   build into DIR (default target/guest) unless it
#                            is already there; prints DIR
# DIR gets vmlinuz and initrd.gz. Needs busybox-static (setup.sh installs it)
# and apt-get download for the kernel package.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/guest}")
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ] && [ "$(cat "$out/version" 2>/dev/null)" = 5 ]; then
  echo "$out"
  exit 0
fi
command -v busybox >/dev/null && busybox --list | grep -qx nc || {
  echo "guest.sh: needs busybox-static (apt-get install busybox-static)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The cloud flavour: smallest image, virtio-net and virtio-pci as modules.
pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
[ -n "$pkg" ] || { echo "guest.sh: no linux-image-cloud-amd64 in apt's lists (apt-get update?)" >&2; exit 2; }
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || {
  apt-get update -qq && (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1); }
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
moddir=$(ls -d "$work"/kernel/lib/modules/*)

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,modules}
cp "$(command -v busybox)" "$root/bin/busybox"
# virtio_net and what it needs, dependencies first.
declare -A seen=()
order=()
add() {
  local m=$1 f deps d
  [ -n "${seen[$m]:-}" ] && return
  seen[$m]=1
  f=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
  [ -n "$f" ] || { echo "guest.sh: module $m not in $pkg" >&2; exit 2; }
  deps=$(modinfo -F depends "$f" | tr ',' ' ')
  for d in $deps; do add "${d//-/_}"; done
  case $f in *.xz) xz -dc "$f" >"$root/modules/$m.ko" ;; *) cp "$f" "$root/modules/$m.ko" ;; esac
  order+=("$m")
}
add virtio_pci
add virtio_net
printf '%s\n' "${order[@]}" >"$root/modules/order"

# A one-line echo service for the TCP checks (nc -ll -e runs it per
# connection; it answers one line and closes, so the client ends).
cat >"$root/bin/echo1" <<'EOF'
#!/bin/sh
read -r line
echo "$line"
EOF
# A sink for the throughput check: counts what one connection sends.
cat >"$root/bin/sink" <<'EOF'
#!/bin/sh
wc -c >/tmp/got.new && mv /tmp/got.new /tmp/got
EOF
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
dmesg -n 1
for m in $(cat /modules/order); do insmod "/modules/$m.ko"; done
arg() { for w in $(cat /proc/cmdline); do case $w in "$1="*) echo "${w#*=}" ;; esac; done; }
ip link set lo up
ip link set eth0 up
ip addr add "$(arg sg.ip)" dev eth0
# No duplicate address detection (busybox ip has no nodad): the address is
# usable at once.
echo 0 >/proc/sys/net/ipv6/conf/eth0/accept_dad
[ -z "$(arg sg.ip6)" ] || ip addr add "$(arg sg.ip6)" dev eth0
[ -z "$(arg sg.gw)" ] || ip route add default via "$(arg sg.gw)"
stty -echo
echo "SGGUEST-READY $(arg sg.ip)"
# The command loop: each line is run by a shell of its own (a syntax error
# must not end init); the host adds its own end marker to each.
while IFS= read -r line; do sh -c "$line"; done
poweroff -f
EOF
chmod +x "$root/init" "$root/bin/echo1" "$root/bin/sink"
mkdir -p "$out"
(cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$out/initrd.gz.new"
cp "$work"/kernel/boot/vmlinuz-* "$out/vmlinuz.new"
mv "$out/initrd.gz.new" "$out/initrd.gz"
mv "$out/vmlinuz.new" "$out/vmlinuz"
echo "$pkg" >"$out/kernel"
echo 5 >"$out/version"
echo "$out"
