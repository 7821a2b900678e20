#!/bin/bash
# Runs as PID 1 of fresh pid, mount, uts, ipc, net and cgroup namespaces (see machine.py) and
# turns into systemd. Before it does, it hides everything a booting systemd would act on:
#
#   * every place systemd or the install writes is a fresh tmpfs (/tmp, /var/tmp, /run,
#     /var/log, /var/cache, /var/spool, /home) or an overlay whose writes land in a tmpfs
#     (/etc, /usr, /opt, /var/lib, /root): the host's files are never written or deleted;
#   * /etc/systemd/system is empty but for our target, our masks and what the test installs,
#     so no unit enabled on the host starts; /etc/fstab is empty (no generated mounts);
#   * /proc/sys and /sys are read-only, /dev/kmsg is /dev/null; the network namespace has
#     only loopback; the cgroup namespace is rooted in a cgroup made for this machine.
#
# Then it checks that each of those is in place and refuses to boot otherwise.
set -euo pipefail

share=$1   # the test's directory: bound at /srv before /tmp is hidden
repo=$2    # the checkout (and its venv): visible at its own path, wherever it lives
shift 2

mount --make-rprivate /
mount --bind "$share" /srv
mount --bind "$repo" /mnt   # held here while the tmpfs mounts below may hide its path

mount -t tmpfs -o mode=0755,size=256m tk-layers /media
for d in etc usr opt var/lib root; do
    mkdir -p "/media/$d/upper" "/media/$d/work"
    mount -t overlay overlay \
        -o "lowerdir=/$d,upperdir=/media/$d/upper,workdir=/media/$d/work" "/$d"
done
for d in /tmp /var/tmp /var/log /var/cache /var/spool /home; do
    mount -t tmpfs -o mode=1777,size=256m tk-scratch "$d"
done
mount -t tmpfs -o mode=0755,size=64m tk-run /run
mount -t tmpfs -o mode=0755 tk-units /etc/systemd/system
mkdir -p "$repo" && mount --bind /mnt "$repo"
: > /etc/fstab

mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount --bind /dev/null /dev/kmsg
mount --bind /sys /sys
mount -o remount,bind,ro /sys
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup

# --- units: our target, and masks for everything that touches the host or is not needed ---
units=/etc/systemd/system
cat > "$units/tunnelkeeper-test.target" <<'EOF'
[Unit]
Description=tunnelkeeper under test: basic.target and what the test starts, nothing else
Requires=basic.target
After=basic.target
AllowIsolate=yes
EOF
for u in \
    systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
    systemd-tmpfiles-setup-dev-early.service systemd-tmpfiles-clean.service \
    systemd-tmpfiles-clean.timer systemd-sysctl.service systemd-modules-load.service \
    systemd-remount-fs.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
    proc-sys-fs-binfmt_misc.mount systemd-random-seed.service systemd-firstboot.service \
    systemd-machine-id-commit.service systemd-hwdb-update.service systemd-sysusers.service \
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    systemd-udev-trigger.service systemd-udev-settle.service systemd-networkd.service \
    systemd-networkd.socket systemd-networkd-wait-online.service systemd-resolved.service \
    systemd-timesyncd.service systemd-hostnamed.service systemd-logind.service \
    systemd-journald-audit.socket systemd-pstore.service systemd-boot-update.service \
    systemd-update-utmp.service systemd-update-utmp-runlevel.service ldconfig.service \
    getty.target console-getty.service getty@.service serial-getty@.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
    sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
    kmod-static-nodes.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer logrotate.timer man-db.timer \
    dpkg-db-backup.timer cron.service dbus.service dbus.socket \
    ; do
    ln -s /dev/null "$units/$u"
done

# --- refuse to boot unless every protection above is in place ---
fstype() { findmnt -n -o FSTYPE --target "$1" | tail -n 1; }  # the topmost mount
for d in /tmp /var/tmp /run /var/log /var/cache /etc/systemd/system; do
    [ "$(fstype "$d")" = tmpfs ] || { echo "boot.sh: $d is not a private tmpfs" >&2; exit 70; }
done
for d in /etc /usr /opt /var/lib /root; do
    [ "$(fstype "$d")" = overlay ] || { echo "boot.sh: $d is not an overlay" >&2; exit 70; }
done
[ "$(fstype /sys/fs/cgroup)" = cgroup2 ] || { echo "boot.sh: no private cgroup2" >&2; exit 70; }
if ip -o link show | grep -qv ': lo:'; then
    echo "boot.sh: the network namespace has more than loopback" >&2
    exit 70
fi
[ ! -e /etc/systemd/system/multi-user.target.wants ] || exit 70

# Shared again, but only among this namespace's mounts: the links to the host's mounts were cut
# by --make-rprivate above, so nothing can propagate back to the host. systemd needs it: it
# sets up a service's credentials in a child's mount namespace and relies on propagation to
# see them (LoadCredential= came up empty without this).
mount --make-rshared /
ip link set lo up
hostname tk-machine
exec env -i container=tunnelkeeper-test TERM=dumb PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=tunnelkeeper-test.target "$@"
