#!/usr/bin/env bash
# A small Linux guest with the kernel's CAN stack, for what needs SocketCAN (docs/REFERENCE §7 of
# the project brief: this machine kind has no AF_CAN of its own).
#
#   scripts/socketcan-guest.sh build        # install what is missing, build the guest once
#   scripts/socketcan-guest.sh run CMD...   # boot it and run CMD from the checkout's root
#   scripts/socketcan-guest.sh test [ARGS]  # the SocketCAN tests: on this host when it has
#                                           # vcan0 and vcan1 (or can make them), else in the guest
#
# The guest is Debian's stock kernel (its package unpacked, never installed) and a busybox
# initramfs that loads can, can-raw, can-gw, can-isotp and vcan, creates vcan0 and vcan1 (up,
# txqueuelen 1000), mounts the host's root over 9p and runs CMD there in a chroot, so the
# project's own .venv works as it is and whatever CMD writes under the checkout stays on the
# host. It runs under QEMU's TCG emulation (KVM hangs on this machine kind): about 10-30 times
# slower than the host for Python, so only figures from one run are compared with each other.
# Everything is kept in .socketcan/ (git-ignored) and reused. The exit status is CMD's; a guest
# that does not start or does not finish is a failure with the console's last lines, never a
# silent skip.
#
# GUEST_CPUS=N boots N emulated CPUs (default: this host's cores); GUEST_KERNEL_ARGS='...' adds
# to the guest kernel's command line (idle=poll: docs/PERFORMANCE.md, on the data plane's tail).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GUEST="$ROOT/.socketcan"
BOOT_TIMEOUT_S="${SOCKETCAN_GUEST_TIMEOUT:-1200}"  # the whole run, boot included
MODULES="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         netfs fscache 9pnet 9pnet_virtio 9p can can-raw can-gw can-isotp can-dev vcan sch_tbf"
# sch_tbf: a token bucket on a vcan's transmit queue fills it as a busy bus fills a real
# controller's, so that the tests see ENOBUFS.

die() { echo "socketcan-guest: $*" >&2; exit 1; }

need_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v candump >/dev/null || missing+=(can-utils)
    command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "socketcan-guest: installing ${missing[*]} (Debian packages)" >&2
        [ "$(id -u)" -eq 0 ] || die "needs ${missing[*]}: install them (apt-get install ${missing[*]})"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    fi
}

kernel_package() {
    # linux-image-amd64 is a metapackage: the kernel itself is what it depends on.
    apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1
}

have_kernel() {
    [ -f "$GUEST/vmlinuz" ] || return 1
    for module in $MODULES; do
        [ -f "$GUEST/modules/$module.ko" ] || return 1
    done
}

build_kernel() {
    have_kernel && return
    local package
    package="$(kernel_package)"
    [ -n "$package" ] || die "no linux-image-amd64 in the package index (apt-get update?)"
    rm -rf "$GUEST/kernel" && mkdir -p "$GUEST/kernel"
    (cd "$GUEST/kernel" && apt-get download "$package" >/dev/null 2>&1) \
        || die "apt-get download $package failed"
    dpkg -x "$GUEST"/kernel/*.deb "$GUEST/kernel/root"
    local tree
    tree="$(echo "$GUEST"/kernel/root/lib/modules/*)"
    rm -rf "$GUEST/modules" && mkdir -p "$GUEST/modules"
    for module in $MODULES; do
        cp "$(find "$tree" -name "$module.ko" | head -1)" "$GUEST/modules/" \
            || die "$package has no $module.ko"
    done
    cp "$GUEST"/kernel/root/boot/vmlinuz-* "$GUEST/vmlinuz"
    rm -rf "$GUEST/kernel"
}

build_initramfs() {
    # Made again on every run (under a second): it always matches this script.
    local staging="$GUEST/initramfs"
    rm -rf "$staging" && mkdir -p "$staging"/{bin,proc,sys,dev,host,modules}
    cp /bin/busybox "$staging/bin/busybox"
    cp "$GUEST"/modules/*.ko "$staging/modules/"
    cat >"$staging/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(echo $MODULES); do
    insmod /modules/\$module.ko || echo "socketcan-guest: insmod \$module failed"
done
root=\$(sed -n 's/.*modbatt_root=\([^ ]*\).*/\1/p' /proc/cmdline)
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none host /host
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
# A local temporary directory: SQLite's WAL cannot use the 9p mount (the API-Bridge refuses it).
mkdir -p /host/dev/shm && mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# The host's iproute2 (busybox's ip cannot set txqueuelen), named by its path: given a bare
# name, busybox runs its own applet even inside the chroot.
chroot /host /sbin/ip link set dev lo up  # the embedded API-Bridge serves on loopback
for bus in vcan0 vcan1; do
    chroot /host /sbin/ip link add dev \$bus type vcan
    chroot /host /sbin/ip link set dev \$bus txqueuelen 1000 up
done
chroot /host /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TMPDIR=/dev/shm MODBATT_SOCKETCAN_GUEST=1 /bin/sh -c "cd \$root && sh .socketcan/run/cmd.sh"
echo \$? > /host\$root/.socketcan/run/rc
sync
poweroff -f
EOF
    chmod +x "$staging/init"
    (cd "$staging" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$GUEST/initrd.gz")
    rm -rf "$staging"
}

build() {
    need_packages
    mkdir -p "$GUEST"
    build_kernel
    build_initramfs
}

run() {
    [ "$#" -gt 0 ] || die "usage: $0 run CMD..."
    case "$ROOT" in *[[:space:]]*) die "the checkout's path has a space: $ROOT" ;; esac
    build
    mkdir -p "$GUEST/run"
    rm -f "$GUEST/run/rc"
    printf '%s\n' "$*" >"$GUEST/run/cmd.sh"
    local console="$GUEST/run/console.log"
    local status=0
    timeout "$BOOT_TIMEOUT_S" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp "${GUEST_CPUS:-$(nproc)}" -m 3072 \
        -nographic -no-reboot -monitor none -serial stdio -nic none -vga none \
        -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 ${GUEST_KERNEL_ARGS:-} modbatt_root=$ROOT" \
        -virtfs local,path=/,mount_tag=host,security_model=passthrough,multidevs=remap \
        | tee "$console" || status=$?
    if [ ! -f "$GUEST/run/rc" ]; then
        if [ "$status" -eq 124 ]; then
            die "the guest did not finish within ${BOOT_TIMEOUT_S} s (console: $console)"
        fi
        die "the guest did not start or did not run the command (qemu status $status; console: $console)"
    fi
    return "$(cat "$GUEST/run/rc")"
}

host_has_socketcan() {
    # A developer's Linux laptop or the pack board: vcan0 and vcan1 up, or made here.
    for bus in vcan0 vcan1; do
        if [ ! -e "/sys/class/net/$bus" ]; then
            ip link add dev "$bus" type vcan 2>/dev/null || return 1
        fi
        ip link set dev "$bus" up 2>/dev/null || [ -e "/sys/class/net/$bus" ] || return 1
    done
}

socketcan_tests() {
    local pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider tests/socketcan "$@")
    if host_has_socketcan; then
        echo "socketcan-guest: this host has SocketCAN; the tests run here" >&2
        (cd "$ROOT" && "${pytest[@]}")
    else
        # the guest's console is a terminal: no colour codes in CI's log
        run "${pytest[*]} --color=no"
    fi
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    test) shift; socketcan_tests "$@" ;;
    *) die "usage: $0 build | run CMD... | test [PYTEST ARGS]" ;;
esac
