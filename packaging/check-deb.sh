#!/usr/bin/env bash
# Checks the Debian package `make deb` built: its files and their modes, the conffiles, the
# maintainer scripts, the unit, the logrotate snippet, and the packaged binary checking the
# packaged configuration. As root (CI) it also installs the package with dpkg, runs
# `postern check` on /etc/postern/postern.yaml through the default path, and purges it.
# Nothing is started: the packaged configuration listens on all interfaces.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR=${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}
deb=$(ls -t "$TARGET_DIR"/debian/postern_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "check-deb: no package in $TARGET_DIR/debian (run make deb)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "check-deb: $deb: $*" >&2; exit 1; }
echo "checking $deb"

contents=$(dpkg-deb -c "$deb")
has() { # mode path
    grep -Eq "^$1 .* \./$2\$" <<<"$contents" || fail "missing or wrong mode ($1): /$2"
}
has '-rwxr-xr-x' usr/bin/postern
has '-rw-r--r--' etc/postern/postern.yaml
has '-rw-------' etc/postern/postern.env
has '-rw-r--r--' etc/logrotate.d/postern
grep -Eq '\./(usr/)?lib/systemd/system/postern\.service$' <<<"$contents" || fail "no systemd unit"
has '-rw-r--r--' usr/share/bash-completion/completions/postern
has '-rw-r--r--' usr/share/zsh/vendor-completions/_postern
has '-rw-r--r--' usr/share/fish/vendor_completions.d/postern.fish
has '-rw-r--r--' usr/share/man/man1/postern.1.gz
has '-rw-r--r--' usr/share/doc/postern/postern.example.yaml
has '-rw-r--r--' usr/share/doc/postern/monitoring/alerts.yaml

dpkg-deb -e "$deb" "$work/DEBIAN"
for f in /etc/postern/postern.yaml /etc/postern/postern.env /etc/logrotate.d/postern; do
    grep -qx "$f" "$work/DEBIAN/conffiles" || fail "$f is not a conffile"
done
grep -q 'deb-systemd-helper' "$work/DEBIAN/postinst" || fail "postinst does not register the unit"
grep -q 'postern upgrade' "$work/DEBIAN/postinst" || fail "postinst does not hand over on upgrade"
if grep -Eq 'deb-systemd-invoke (restart|start)' "$work/DEBIAN/postinst"; then
    fail "postinst restarts or starts the service (an upgrade must hand over, not restart)"
fi
sh -n "$work/DEBIAN/postinst" || fail "postinst is not valid sh"

dpkg-deb -x "$deb" "$work/root"
bin="$work/root/usr/bin/postern"
"$bin" --version | grep -q 'pingora' || fail "postern --version does not name Pingora"
if readelf -S "$bin" | grep -q '\.debug_info'; then fail "the binary is not stripped"; fi
"$bin" check -c "$work/root/etc/postern/postern.yaml"
for f in "$work"/root/usr/share/doc/postern/examples/*.yaml; do
    # The examples refer to certificates relative to a source checkout: check them from there.
    [ -f "conf/examples/$(basename "$f")" ] || fail "example $(basename "$f") is not one of conf/examples"
done
zcat "$work/root/usr/share/man/man1/postern.1.gz" | grep -q '^\.TH postern' || fail "man page"
bash -n "$work/root/usr/share/bash-completion/completions/postern" || fail "bash completion"
unit=$(find "$work/root" -name postern.service)
sed "s#/usr/bin/postern#$bin#g" "$unit" > "$work/postern.service"
systemd-analyze verify "$work/postern.service"
if command -v logrotate >/dev/null; then
    logrotate -d "$work/root/etc/logrotate.d/postern" 2>&1 | grep -qi 'error' && fail "logrotate snippet"
fi

if [ "$(id -u)" = 0 ] && ! dpkg -s postern >/dev/null 2>&1; then
    echo "installing it with dpkg"
    dpkg -i "$deb"
    [ -x /usr/bin/postern ] || fail "dpkg -i installed no binary"
    (cd / && postern check) | grep -q '/etc/postern/postern.yaml: configuration is valid' \
        || fail "the installed postern does not check /etc/postern/postern.yaml by default"
    [ "$(stat -c %a /etc/postern/postern.env)" = 600 ] || fail "postern.env is not 0600"
    dpkg --purge postern
    [ ! -e /etc/postern/postern.yaml ] || fail "purge left /etc/postern/postern.yaml"
fi
echo "package OK: $(basename "$deb") ($(du -h "$deb" | cut -f1))"
