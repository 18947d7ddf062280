# shellcheck shell=bash
# Common helpers for trenv's integration scripts. Source it, do not run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Provides:
#   TRENV_CACHE            cache dir (default /var/cache/trenv); everything the
#                          scripts install or build lives below it
#   TRENV_REPO             the repository root (two levels above this file)
#   log / warn / die       log lines prefixed with the calling script's name (stderr)
#   trenv_mirror_uri       the Debian mirror URI read from the system's apt sources
#   trenv_apt SUITE ARGS   apt-get against a PRIVATE apt config for SUITE
#                          (trixie, sid, ...) kept in $TRENV_CACHE/apt/SUITE
#   trenv_apt_cache SUITE ARGS    apt-cache, same config
#   trenv_apt_update SUITE [force]  refresh that suite's lists when needed
#   trenv_apt_download SUITE PKG DIR  download PKG's .deb into DIR, print its path
#   trenv_pkgs_missing PKG...  print the packages that are not installed
#
# Nothing here changes the system's apt configuration: the private configs have
# their own sources list, lists, status file and archive cache.

TRENV_CACHE="${TRENV_CACHE:-/var/cache/trenv}"
export TRENV_CACHE
TRENV_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export TRENV_REPO
TRENV_LOG_NAME="${TRENV_LOG_NAME:-$(basename "${0%.sh}")}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[%s] %s\n' "$TRENV_LOG_NAME" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$TRENV_LOG_NAME" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$TRENV_LOG_NAME" "$*" >&2
    exit 1
}

# The system's Debian keyring. Debian 12's debian-archive-keyring
# (2023.3+deb12u2) already holds the trixie keys, and trixie and sid Release
# files are (as of 2026-11) signed by both the bookworm and the trixie automatic
# signing keys, so it verifies both suites. Should that stop being true (e.g. sid
# signed only by a key newer than this keyring), trenv_apt_update falls back to
# the debian-archive-keyring package of a suite that still verifies, see there.
TRENV_SYSTEM_KEYRING="${TRENV_SYSTEM_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
# Suite whose debian-archive-keyring .deb is used when the system keyring cannot
# verify a suite. Its own Release must verify with the system keyring.
TRENV_KEYRING_SUITE="${TRENV_KEYRING_SUITE:-trixie}"

# Print the URI of the Debian archive mirror the system uses: the first
# enabled "deb" source that serves this system's codename (from deb822 files
# in /etc/apt/sources.list.d/*.sources or one-line /etc/apt/sources.list and
# sources.list.d/*.list); failing that the first non-security one.
trenv_mirror_uri() {
    local codename uri files=()
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    local etc="${TRENV_APT_ETC:-/etc/apt}" f
    [[ -f "$etc/sources.list" ]] && files+=("$etc/sources.list")
    for f in "$etc"/sources.list.d/*.list "$etc"/sources.list.d/*.sources; do
        [[ -f "$f" ]] && files+=("$f")
    done
    ((${#files[@]})) || die "no apt sources found in $etc"
    uri="$(awk -v codename="$codename" '
        function pick(uris, suites,   s, u, n, i) {
            sub(/^[ \t]+/, "", uris); sub(/^[ \t]+/, "", suites)
            split(uris, u, /[ \t]+/)
            n = split(suites, s, /[ \t]+/)
            for (i = 1; i <= n; i++) {
                if (s[i] == codename) { best = u[1]; return }
                if (fallback == "" && s[i] != "" && s[i] !~ /-security$/ && u[1] !~ /security/) fallback = u[1]
            }
        }
        function flush() {
            if (best == "" && types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no" && uris != "")
                pick(uris, suites)
            types = ""; uris = ""; suites = ""; enabled = ""; key = ""
        }
        FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
        /^[ \t]*#/ { next }
        !deb822 {
            line = $0
            sub(/\[[^]]*\]/, "", line)           # drop [ options ]
            n = split(line, w, /[ \t]+/)
            j = 0; for (i = 1; i <= n; i++) if (w[i] != "") v[++j] = w[i]
            if (j >= 3 && v[1] == "deb" && best == "") pick(v[2], v[3])
            next
        }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ {                               # continuation line
            val = $0; sub(/^[ \t]+/, "", val)
            if (key == "uris") uris = uris " " val
            else if (key == "suites") suites = suites " " val
            next
        }
        {
            key = tolower($0); sub(/:.*/, "", key)
            val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
            if (key == "types") types = val
            else if (key == "uris") uris = val
            else if (key == "suites") suites = val
            else if (key == "enabled") enabled = val
        }
        END { flush(); if (best != "") print best; else if (fallback != "") print fallback }
    ' "${files[@]}")"
    [[ -n "$uri" ]] || die "could not find a Debian mirror URI in the system's apt sources"
    printf '%s\n' "${uri%/}"
}

# Private apt config for SUITE under $TRENV_CACHE/apt/SUITE. Rewritten on every
# call (cheap) so that a changed mirror or keyring is picked up.
trenv_apt_dir() { printf '%s/apt/%s\n' "$TRENV_CACHE" "$1"; }

trenv_apt_keyring() {
    local suite="$1" dir
    dir="$(trenv_apt_dir "$suite")"
    if [[ -f "$dir/use-fetched-keyring" ]]; then
        printf '%s/apt/keyring/usr/share/keyrings/debian-archive-keyring.gpg\n' "$TRENV_CACHE"
    else
        printf '%s\n' "$TRENV_SYSTEM_KEYRING"
    fi
}

trenv_apt_setup() {
    local suite="$1" dir mirror keyring conf tmp
    dir="$(trenv_apt_dir "$suite")"
    mkdir -p "$dir"/lists/partial "$dir"/cache/archives/partial "$dir"/etc/sources.list.d \
        "$dir"/etc/preferences.d "$dir"/debs
    [[ -e "$dir/status" ]] || : >"$dir/status"
    # apt downloads as the unprivileged _apt user: let it write the partial dirs
    # and the download dir (else apt warns and downloads unsandboxed as root).
    if id _apt >/dev/null 2>&1; then
        chown _apt:root "$dir"/lists/partial "$dir"/cache/archives/partial "$dir"/debs
    fi
    mirror="$(trenv_mirror_uri)"
    keyring="$(trenv_apt_keyring "$suite")"
    [[ -r "$keyring" ]] || die "keyring $keyring not readable"
    tmp="$(printf 'deb [signed-by=%s] %s %s main\ndeb-src [signed-by=%s] %s %s main\n' \
        "$keyring" "$mirror" "$suite" "$keyring" "$mirror" "$suite")"
    if [[ ! -f "$dir/sources.list" || "$(cat "$dir/sources.list")" != "$tmp" ]]; then
        printf '%s\n' "$tmp" >"$dir/sources.list"
    fi
    conf="$dir/apt.conf"
    tmp="$(
        cat <<EOF
// Generated by integration/scripts/lib.sh: private apt config for $suite.
// Read after the system's apt.conf.d (APT_CONFIG), so only these keys differ.
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "$dir/etc/sources.list.d";
Dir::Etc::Preferences "$dir/etc/preferences";
Dir::Etc::PreferencesParts "$dir/etc/preferences.d";
Dir::State "$dir";
Dir::State::Lists "$dir/lists";
Dir::State::status "$dir/status";
Dir::Cache "$dir/cache";
Dir::Cache::archives "$dir/cache/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
// No AppStream (DEP-11) metadata: we only need Packages and Sources.
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled "false";
EOF
    )"
    if [[ ! -f "$conf" || "$(cat "$conf")" != "$tmp" ]]; then
        printf '%s\n' "$tmp" >"$conf"
    fi
}

trenv_apt() {
    local suite="$1"
    shift
    APT_CONFIG="$(trenv_apt_dir "$suite")/apt.conf" apt-get -y "$@"
}

trenv_apt_cache() {
    local suite="$1"
    shift
    APT_CONFIG="$(trenv_apt_dir "$suite")/apt.conf" apt-cache "$@"
}

# Fetch the newer debian-archive-keyring .deb from $TRENV_KEYRING_SUITE (whose
# Release verifies with the system keyring, so the .deb is authenticated through
# Release -> Packages -> .deb hashes) and unpack it to $TRENV_CACHE/apt/keyring.
trenv_fetch_keyring() {
    local deb out="$TRENV_CACHE/apt/keyring"
    if [[ -s "$out/usr/share/keyrings/debian-archive-keyring.gpg" ]]; then
        return 0
    fi
    log "fetching debian-archive-keyring from $TRENV_KEYRING_SUITE (verified by the system keyring)"
    trenv_apt_update "$TRENV_KEYRING_SUITE" || die "cannot verify $TRENV_KEYRING_SUITE with the system keyring either"
    deb="$(trenv_apt_download "$TRENV_KEYRING_SUITE" debian-archive-keyring "$(trenv_apt_dir "$TRENV_KEYRING_SUITE")/debs")"
    rm -rf "$out.tmp"
    dpkg -x "$deb" "$out.tmp"
    [[ -s "$out.tmp/usr/share/keyrings/debian-archive-keyring.gpg" ]] || die "no keyring in $deb"
    rm -rf "$out"
    mv "$out.tmp" "$out"
}

# Refresh the lists of SUITE if it has none yet, if they are older than
# TRENV_APT_MAX_AGE_DAYS (default 7), or if $2 == force.
trenv_apt_update() {
    local suite="$1" force="${2:-}" dir out rc
    trenv_apt_setup "$suite"
    dir="$(trenv_apt_dir "$suite")"
    if [[ "$force" != force ]] && compgen -G "$dir/lists/*_Packages*" >/dev/null &&
        [[ -z "$(find "$dir/lists" -maxdepth 1 -name '*InRelease' -mtime "+${TRENV_APT_MAX_AGE_DAYS:-7}")" ]]; then
        return 0
    fi
    log "apt-get update ($suite, private config $dir)"
    rc=0
    out="$(trenv_apt "$suite" update 2>&1)" || rc=$?
    printf '%s\n' "$out" | sed "s/^/[$TRENV_LOG_NAME]   /" >&2
    if printf '%s' "$out" | grep -q -E 'NO_PUBKEY|EXPKEYSIG|is not signed|KEYEXPIRED'; then
        if [[ -f "$dir/use-fetched-keyring" || "$suite" == "$TRENV_KEYRING_SUITE" ]]; then
            die "$suite: Release signature cannot be verified (see above); refusing to go on unverified"
        fi
        warn "$suite: the system keyring cannot verify its Release; using the debian-archive-keyring package of $TRENV_KEYRING_SUITE"
        trenv_fetch_keyring
        touch "$dir/use-fetched-keyring"
        trenv_apt_setup "$suite"
        rc=0
        out="$(trenv_apt "$suite" update 2>&1)" || rc=$?
        printf '%s\n' "$out" | sed "s/^/[$TRENV_LOG_NAME]   /" >&2
        if printf '%s' "$out" | grep -q -E 'NO_PUBKEY|EXPKEYSIG|is not signed|KEYEXPIRED'; then
            die "$suite: Release signature cannot be verified even with the fetched keyring"
        fi
    fi
    if printf '%s' "$out" | grep -q -E 'is expired|not valid yet'; then
        # Only the Valid-Until freshness check is relaxed here (the mirror may be a
        # snapshot whose sid Release is past its 7-day Valid-Until); signatures
        # and all hashes are still verified.
        warn "$suite: Release file is past its Valid-Until; retrying with Acquire::Check-Valid-Until=false (signatures still checked)"
        rc=0
        out="$(trenv_apt "$suite" -o Acquire::Check-Valid-Until=false update 2>&1)" || rc=$?
        printf '%s\n' "$out" | sed "s/^/[$TRENV_LOG_NAME]   /" >&2
    fi
    if ((rc != 0)) || printf '%s' "$out" | grep -q -E '^(E:|W: GPG error)'; then
        die "apt-get update for $suite failed"
    fi
}

# Download the .deb of PKG from SUITE into DIR (verified by apt against the
# signed lists) and print its path. Re-uses an already downloaded file of the
# candidate version. Retries once after a forced update (stale lists -> 404).
trenv_apt_download() {
    local suite="$1" pkg="$2" dir="$3" ver arch f try
    trenv_apt_update "$suite"
    mkdir -p "$dir"
    id _apt >/dev/null 2>&1 && chown _apt:root "$dir"
    for try in 1 2; do
        ver="$(trenv_apt_cache "$suite" policy "$pkg" | awk '/Candidate:/ {print $2}')"
        [[ -n "$ver" && "$ver" != "(none)" ]] || die "$pkg not found in $suite"
        arch="$(trenv_apt_cache "$suite" show "$pkg=$ver" | awk '/^Architecture:/ {print $2; exit}')"
        # .deb file names encode the epoch colon as %3a
        f="$dir/${pkg}_${ver//:/%3a}_${arch}.deb"
        if [[ -s "$f" ]]; then
            printf '%s\n' "$f"
            return 0
        fi
        log "downloading $pkg $ver from $suite"
        if (cd "$dir" && trenv_apt "$suite" download "$pkg=$ver" >&2) && [[ -s "$f" ]]; then
            printf '%s\n' "$f"
            return 0
        fi
        [[ $try == 1 ]] && trenv_apt_update "$suite" force
    done
    die "could not download $pkg from $suite"
}

# Debian bookworm's jemalloc (libjemalloc2), unpacked once into $TRENV_CACHE/jemalloc for the
# tests of a function whose allocator takes memory it discarded for zeros
# (integration/tests/templates.rs); the VM guest sees the same cache.
trenv_jemalloc() {
    local dir="$TRENV_CACHE/jemalloc" deb tmp
    [[ -f "$dir/libjemalloc.so.2" ]] && return 0
    deb="$(trenv_apt_download bookworm libjemalloc2 "$(trenv_apt_dir bookworm)/debs")"
    tmp="$(mktemp -d)"
    dpkg -x "$deb" "$tmp"
    mkdir -p "$dir"
    cp -L "$tmp/usr/lib/x86_64-linux-gnu/libjemalloc.so.2" "$dir/libjemalloc.so.2.tmp"
    mv "$dir/libjemalloc.so.2.tmp" "$dir/libjemalloc.so.2"
    rm -rf "$tmp"
}

# Print those of the given (system, bookworm) packages that are not installed.
trenv_pkgs_missing() {
    local installed
    installed="$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "$@" 2>/dev/null | awk '$2 == "ii" {print $1}' || true)"
    local p
    for p in "$@"; do
        grep -qxF "$p" <<<"$installed" || printf '%s\n' "$p"
    done
}

# version_ge A B: true if version A >= B (dpkg ordering).
version_ge() { dpkg --compare-versions "$1" ge "$2"; }
