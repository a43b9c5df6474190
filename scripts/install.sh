#!/usr/bin/env bash
# Installs Loong's binaries from a release directory or tarball that holds them and a
# SHA256SUMS file, or uninstalls them. Every binary is copied into a private staging directory
# and checked there against SHA256SUMS before anything is installed, so a mismatch, a missing
# entry or a file swapped after the check installs nothing.
#
#   scripts/install.sh [--prefix DIR] RELEASE_DIR|RELEASE.tar[.gz]
#   scripts/install.sh [--prefix DIR] --uninstall
#
# Layout under PREFIX (default /usr/local): bin/loongd, bin/loongctl; lib/loong/ holds the
# spawn helper and the workers, where loongd looks for them. State and configuration are never
# touched (uninstall leaves them too). As root, a prefix another user could change is refused.
# A Debian system is better served by the package
# (scripts/package, packaging/README.md).
set -euo pipefail
umask 022

COMMANDS=(loongd loongctl)
PRIVATE=(loong-spawn loong-worker-wasm loong-worker-http loong-worker-builtin loong-worker-stdio loong-worker-plan loong-worker-agent loong-worker-gateway loong-worker-channel loong-worker-browser)
MANIFEST_NAME=install-manifest

die() { echo "install.sh: $*" >&2; exit 1; }

prefix=/usr/local
uninstall=false
source=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --uninstall) uninstall=true; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$source" ] || { echo "install.sh: one release only" >&2; exit 2; }; source=$1; shift ;;
  esac
done
case "$prefix" in /*) ;; *) die "--prefix $prefix is not an absolute path" ;; esac
bindir=$prefix/bin
libdir=$prefix/lib/loong

# Run as root, the binaries go where only root may change them: loongd runs the helper and the
# workers as root, so a prefix another user can write (or own, or reach through a symlink they
# can swap) would hand them root. Every directory that exists on the way to bin/ and
# lib/loong/ must be owned by root and writable by no one else; then nobody else can change
# the path between this check and the install, and the resolved path is the one used.
root_only() {
  local p=$1 rest cur next owner mode
  [ "$(id -u)" -eq 0 ] || { printf '%s' "$p"; return 0; }
  p=$(realpath -m -- "$p") || die "--prefix $prefix cannot be resolved"
  cur=/
  rest=${p#/}
  while :; do
    [ -e "$cur" ] || break
    [ -d "$cur" ] && [ ! -L "$cur" ] || die "$cur (on the way to $p) is not a directory; nothing was installed"
    read -r owner mode < <(stat -c '%u %a' -- "$cur")
    [ "$owner" -eq 0 ] || die "$cur (on the way to $p) is owned by uid $owner, not root; nothing was installed"
    next=${cur%/}/${rest%%/*}
    # A sticky directory (/tmp) is let through only to a name that already exists there (and
    # is checked next): another user cannot rename what root owns in it, but could create a
    # name that does not exist yet.
    (( (8#$mode & 8#022) == 0 )) || { (( (8#$mode & 8#1000) != 0 )) && [ -n "$rest" ] && [ -e "$next" ]; } \
      || die "$cur (on the way to $p) is writable by others than root (mode $mode); nothing was installed"
    [ -n "$rest" ] || break
    cur=$next
    case "$rest" in */*) rest=${rest#*/} ;; *) rest= ;; esac
  done
  printf '%s' "$p"
}
bindir=$(root_only "$bindir")
libdir=$(root_only "$libdir")

if $uninstall; then
  [ -z "$source" ] || { echo "install.sh: --uninstall takes no release" >&2; exit 2; }
  [ -f "$libdir/$MANIFEST_NAME" ] || die "no Loong installation under $prefix ($libdir/$MANIFEST_NAME is missing)"
  # Only the names this script installs, wherever the manifest says otherwise.
  for n in "${COMMANDS[@]}"; do rm -f "$bindir/$n"; done
  for n in "${PRIVATE[@]}"; do rm -f "$libdir/$n"; done
  rm -f "$libdir/$MANIFEST_NAME"
  rmdir "$libdir" 2>/dev/null || true
  echo "uninstalled Loong from $prefix (state and configuration are left as they are)"
  exit 0
fi

[ -n "$source" ] || { echo "install.sh: name a release directory or tarball (or --uninstall)" >&2; exit 2; }
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
if [ -d "$source" ]; then
  release=$source
elif [ -f "$source" ]; then
  release=$staging/release
  mkdir "$release"
  # GNU tar refuses members with `..` and strips a leading `/`; ownership is not kept.
  tar -xf "$source" -C "$release" --no-same-owner --no-same-permissions \
    || die "$source is not a readable tar archive"
  # A tarball may hold one top directory.
  entries=("$release"/*)
  if [ ${#entries[@]} -eq 1 ] && [ -d "${entries[0]}" ]; then release=${entries[0]}; fi
else
  die "$source is neither a directory nor a file"
fi
[ -f "$release/SHA256SUMS" ] || die "$source has no SHA256SUMS; refusing to install unchecked binaries"

# Copy first, check the copies: what is checked is what gets installed.
checked=$staging/checked
mkdir "$checked"
for n in "${COMMANDS[@]}" "${PRIVATE[@]}"; do
  [ -f "$release/$n" ] && [ ! -L "$release/$n" ] || die "$source lacks the binary $n (or it is not a regular file); nothing was installed"
  cp "$release/$n" "$checked/$n"
  want=$(awk -v n="$n" '($2 == n || $2 == "*" n) { print $1 }' "$release/SHA256SUMS")
  [ "$(printf '%s\n' "$want" | grep -c .)" -eq 1 ] || die "SHA256SUMS has no single entry for $n; nothing was installed"
  printf '%s' "$want" | grep -Eq '^[0-9a-fA-F]{64}$' || die "SHA256SUMS entry for $n is not a sha256; nothing was installed"
  have=$(sha256sum "$checked/$n" | cut -d' ' -f1)
  [ "${have,,}" = "${want,,}" ] || die "checksum mismatch for $n (SHA256SUMS says $want, the file is $have); nothing was installed"
done

install -d -m 0755 "$bindir" "$libdir"
# Each file is put in place by a rename, so a running loongd never sees half a binary.
put() {
  install -m 0755 "$checked/$1" "$2/.$1.new"
  mv -f "$2/.$1.new" "$2/$1"
}
for n in "${PRIVATE[@]}"; do put "$n" "$libdir"; done
for n in "${COMMANDS[@]}"; do put "$n" "$bindir"; done
{
  for n in "${COMMANDS[@]}"; do echo "$bindir/$n"; done
  for n in "${PRIVATE[@]}"; do echo "$libdir/$n"; done
} > "$libdir/$MANIFEST_NAME"
echo "installed Loong into $prefix (commands in $bindir, helper and workers in $libdir)"
