#!/bin/sh
# The walstream command (package.json "bin"). PostgreSQL runs restore_command and archive_command
# once per WAL file, and starting Node costs 70-100 ms a call. Three calls need nothing Node does,
# so this script answers them itself:
#   walstream fetch %f %p --prefetch ...   when the prefetch worker already holds %f in its spool
#   walstream fetch %f %p ...              (no --prefetch) when a plain local archive holds %f
#                                          uncompressed, unencrypted, with its checksum record
#   walstream push %p --parallel N ...     when an earlier call's look-ahead already archived %p
# The first and the last only move or remove a file that a walstream process left once its work
# was complete and durable, in a directory private to its owner; the second copies the archived
# file next to %p and renames it to %p only once the copy's SHA-256 is the one recorded. The
# checks are those commands/fetch.ts and commands/push.ts make on the same path, save one: a
# prefetched segment is complete when its size is the one the spool's request names (Node reads
# its page header for that). Anything else, and any doubt (an option this script does not read, a
# repeated one, a spool that does not answer, a copy that fails or does not match), goes to
# bin/walstream on Node, which decides as if this script were not there.
# test/unit/walstream-sh.test.ts holds the two to that.
# WALSTREAM_NODE names the Node binary (default: node on PATH).

ws_node() {
  ws_self=$0
  case $ws_self in */*) ;; *) ws_self=$(command -v -- "$ws_self") || ws_self=$0 ;; esac
  # npm installs the command as a symbolic link (node_modules/.bin, /usr/bin): follow it, one
  # link at a time where readlink has no -f.
  if ! ws_real=$(readlink -f -- "$ws_self" 2>/dev/null) || [ -z "$ws_real" ]; then
    ws_real=$ws_self
    while [ -L "$ws_real" ]; do
      ws_link=$(readlink -- "$ws_real") || break
      case $ws_link in /*) ws_real=$ws_link ;; *) ws_real=${ws_real%/*}/$ws_link ;; esac
    done
  fi
  # The commands that run for days keep V8's young generation at 2 MB a semi-space (2 x 2 MB):
  # left to itself, V8 doubles it now and then up to 16 MB (32 MB of memory) under a steady
  # stream, so a receiver's memory would grow for an hour and stay there. Draining 1 GB of WAL,
  # the CPU it took stayed within the spread between runs (docs/benchmarks.md). A size given in
  # NODE_OPTIONS is left as it is. They also get gc() (--expose-gc), with which they ask for a full
  # collection once a minute (src/util/heap.ts): V8 lets the old generation fill with garbage for
  # ten minutes before its first one, and keeps the memory it grew into. The command is the first
  # word that is neither an option nor --log-format's value.
  ws_name= ws_skip=
  for ws_a do
    if [ -n "$ws_skip" ]; then
      ws_skip=
      continue
    fi
    case $ws_a in
      --log-format) ws_skip=1 ;;
      -*) ;;
      *)
        ws_name=$ws_a
        break
        ;;
    esac
  done
  case $ws_name:${NODE_OPTIONS-} in
    receive:*--max-semi-space-size* | serve:*--max-semi-space-size*) exec "${WALSTREAM_NODE:-node}" --expose-gc "${ws_real%/*}/walstream" "$@" ;;
    receive:* | serve:*) exec "${WALSTREAM_NODE:-node}" --max-semi-space-size=2 --expose-gc "${ws_real%/*}/walstream" "$@" ;;
  esac
  exec "${WALSTREAM_NODE:-node}" "${ws_real%/*}/walstream" "$@"
}

# The options of the two calls, as commander reads them: --name VALUE or --name=VALUE, each at
# most once, a value never starting with "-"; fetch's --prefetch takes the next word as its value
# unless that starts with "-". Sets ws_* variables; returns 1 for anything else.
ws_parse() {
  ws_cmd=$1
  shift
  ws_npos=0 ws_pos1= ws_pos2= ws_seen=' ' ws_want=
  for ws_a do
    if [ -n "$ws_want" ]; then
      case $ws_a in
        -*)
          [ "$ws_want" = prefetch-optional ] || return 1
          ws_set prefetch 8 || return 1
          ws_want=
          ;;
        *)
          ws_set "${ws_want%-optional}" "$ws_a" || return 1
          ws_want=
          continue
          ;;
      esac
    fi
    case $ws_cmd:$ws_a in
      *:--archive | *:--s3-endpoint | *:--spool | *:--encryption-key-file | push:--parallel)
        ws_want=${ws_a#--}
        ;;
      *:--archive=* | *:--s3-endpoint=* | *:--spool=* | *:--encryption-key-file=* | push:--parallel=* | fetch:--prefetch=*)
        ws_k=${ws_a%%=*}
        ws_set "${ws_k#--}" "${ws_a#*=}" || return 1
        ;;
      fetch:--prefetch)
        ws_want=prefetch-optional
        ;;
      *:--encryption-required | fetch:--partial | push:--no-sync)
        ws_set "${ws_a#--}" 1 || return 1
        ;;
      *:-*)
        return 1
        ;;
      *)
        ws_npos=$((ws_npos + 1))
        case $ws_npos in
          1) ws_pos1=$ws_a ;;
          2) ws_pos2=$ws_a ;;
          *) return 1 ;;
        esac
        ;;
    esac
  done
  case $ws_want in
    '') ;;
    prefetch-optional) ws_set prefetch 8 || return 1 ;;
    *) return 1 ;;
  esac
}

ws_set() {
  case $ws_seen in *" $1 "*) return 1 ;; esac
  ws_seen="$ws_seen$1 "
  case $1 in
    archive) ws_archive=$2 ;;
    s3-endpoint) ws_endpoint=$2 ;;
    spool) ws_spool=$2 ;;
    parallel) ws_parallel=$2 ;;
    prefetch) ws_prefetch=$2 ;;
  esac
}

ws_given() {
  case $ws_seen in *" $1 "*) return 0 ;; esac
  return 1
}

# A spool or marker directory the script may use: Node resolves its path as text (path.resolve
# drops "a/.." without following a link at a), the kernel would not, so such paths go to Node; it
# must be private to its owner (mode in hex, as stat %f prints it) and readable, as Node reads it.
ws_usable_dir() {
  case /$1/ in */../*) return 1 ;; esac
  [ -r "$1" ] && [ -x "$1" ] || return 1
  [ $((0x$2 & 0xF000)) -eq $((0x4000)) ] && [ $((0x$2 & 0x12)) -eq 0 ]
}

# The archive a spool or marker directory serves (.archive: the archive and endpoint as given,
# written whole without a newline) must be this call's.
ws_same_archive() {
  ws_held=
  [ -f "$1/.archive" ] || return 1
  ! IFS= read -r ws_held 2>/dev/null <"$1/.archive" || return 1
  [ "$ws_held" = "$ws_archive $ws_endpoint" ]
}

# The segment size the spool's request names (.want: JSON written whole by fetch, one line without
# a newline, "segSize" once), into ws_seg; 1 for anything else.
ws_want_seg_size() {
  ws_held=
  [ -f "$1/.want" ] || return 1
  ! IFS= read -r ws_held 2>/dev/null <"$1/.want" || return 1
  case $ws_held in *'"segSize":'*'"segSize":'* | *'\'*) return 1 ;; *'"segSize":'*) ;; *) return 1 ;; esac
  ws_seg=${ws_held#*'"segSize":'}
  ws_seg=${ws_seg%%[,\}]*}
  case $ws_seg in
    1048576 | 2097152 | 4194304 | 8388608 | 16777216 | 33554432 | 67108864 | 134217728 | 268435456 | 536870912 | 1073741824) ;;
    *) return 1 ;;
  esac
}

# What makes the command line refuse a call or print something: a log format it does not take
# (commander checks the choice even when nothing is logged), verbose output, the record check.
ws_quiet_env() {
  case ${WALSTREAM_LOG_FORMAT-text} in text | json) ;; *) return 1 ;; esac
  ! ws_env_on WALSTREAM_VERBOSE && ! ws_env_on WALSTREAM_VERIFY_RECORDS
}

# A flag's variable as the command line reads it: on unless unset, empty, 0, false, no or off.
# Here any value but unset or empty counts as on (the only cost of a wrong "on" is Node).
ws_env_on() {
  eval "[ -n \"\${$1:-}\" ]"
}

# 1 to 64, as cli/options.ts parsePositiveInt takes it (leading zeros go to Node).
ws_count() {
  case $1 in [1-9] | [1-5][0-9] | 6[0-4]) return 0 ;; esac
  return 1
}

ws_segment_name() {
  case $1 in
    [0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F]) return 0 ;;
  esac
  return 1
}

# fetch %f %p: from the prefetch spool when --prefetch is given, else from a plain local archive.
ws_fetch() {
  ws_parse "$@" || return 1
  [ "$ws_npos" -eq 2 ] || return 1
  ws_given archive || ws_archive=${WALSTREAM_ARCHIVE-}
  ws_given s3-endpoint || ws_endpoint=${AWS_ENDPOINT_URL-}
  [ -n "$ws_archive" ] && ws_quiet_env && ws_segment_name "$ws_pos1" || return 1
  if ws_given prefetch || [ -n "${WALSTREAM_PREFETCH+set}" ]; then
    ws_from_spool
  else
    ws_from_archive
  fi
}

# From the spool (commands/fetch.ts with archive/prefetch.ts prepareSpool and takeFromSpool): the
# spool serves this archive, and holds %f complete: a regular file of the segment size its
# request (.want) names. The worker downloads only segments of that size, and renames one into
# the spool only once it is verified against the archive's checksum and fsynced (the page
# header Node also reads would cost one more program here).
ws_from_spool() {
  ws_given spool || ws_spool=${WALSTREAM_SPOOL-.walstream-prefetch}
  ws_given prefetch || ws_prefetch=${WALSTREAM_PREFETCH-}
  [ -n "$ws_spool" ] && ws_count "$ws_prefetch" || return 1
  ws_file=$ws_spool/$ws_pos1
  [ -f "$ws_file" ] && ws_same_archive "$ws_spool" && ws_want_seg_size "$ws_spool" || return 1
  ws_st=$(stat -L -c '%f %s' -- "$ws_spool" "$ws_file" 2>/dev/null) || return 1
  set -- $ws_st
  [ $# -eq 4 ] && ws_usable_dir "$ws_spool" "$1" && [ $((0x$3 & 0xF000)) -eq $((0x8000)) ] || return 1 # a regular file
  [ "$4" = "$ws_seg" ] || return 1
  # A second name for the file, then the spool's removed: %p is never seen half-written, and a
  # link never falls back to copying (mv does, across file systems and mounts). Where it cannot
  # be made, or %p is a directory, Node copies the file or says what is wrong.
  ln -fT -- "$ws_file" "$ws_pos2" 2>/dev/null || return 1
  rm -f -- "$ws_file"
  exit 0
}

# From a local archive directory (commands/fetch.ts, archive/to-file.ts and the local driver's
# plain read): an unencrypted archive (its identity record names no encryption, no key given),
# %f stored plain as a regular file with its record "<sha256> none <size>". The file is copied
# next to %p under a temp name of this process (storage/leftovers.ts tempName, so that a fetch
# killed mid-copy leaves a file the next fetch removes), its SHA-256 taken of the copy, and only
# when that is the recorded one renamed to %p. Anything else, and any failure on the way (a
# checksum that differs, a full disk), goes to Node, which fetches again and says what is wrong;
# so does a %p with temp files beside it (Node removes those a killed fetch left).
ws_from_archive() {
  [ -z "${WALSTREAM_ENCRYPTION_KEY+set}${WALSTREAM_ENCRYPTION_KEY_FILE+set}" ] && ! ws_env_on WALSTREAM_ENCRYPTION_REQUIRED || return 1
  ! ws_given encryption-key-file && ! ws_given encryption-required || return 1
  # An absolute path without "." or ".." parts (Node joins paths as text, the kernel would not).
  case /$ws_archive/ in //*) ;; *) return 1 ;; esac
  case /$ws_archive/ in */../* | */./*) return 1 ;; esac
  ws_obj=$ws_archive/$ws_pos1
  ws_rec=$ws_archive/.walstream-meta/$ws_pos1.sha256
  [ -f "$ws_obj" ] && [ ! -L "$ws_obj" ] && [ -f "$ws_rec" ] && [ ! -L "$ws_rec" ] || return 1
  ws_one_line "$ws_archive/walstream.json" || return 1
  case $ws_line in *'"systemIdentifier"'*) ;; *) return 1 ;; esac
  case $ws_line in *encryption*) return 1 ;; esac
  ws_one_line "$ws_rec" || return 1
  set -f
  set -- $ws_line
  set +f
  [ $# -eq 3 ] && [ "$ws_line" = "$1 $2 $3" ] && [ "$2" = none ] && [ ${#1} -eq 64 ] || return 1
  case $1 in *[!0-9a-f]*) return 1 ;; esac
  case $3 in '' | *[!0-9]*) return 1 ;; esac
  ws_want=$1
  # %p as Node splits it; names a glob would read go to Node.
  case $ws_pos2 in */) return 1 ;; */*) ws_dir=${ws_pos2%/*} ws_base=${ws_pos2##*/} ;; *) ws_dir=. ws_base=$ws_pos2 ;; esac
  case $ws_base in . | .. | *[][*?\\]*) return 1 ;; esac
  case $ws_dir in *[][*?\\]*) return 1 ;; esac
  ws_dir=${ws_dir:-/}
  for ws_f in "$ws_dir"/."$ws_base".* "$ws_dir/$ws_base.walstream-tmp"; do
    if [ -e "$ws_f" ] || [ -L "$ws_f" ]; then return 1; fi
  done
  ws_writer || return 1
  ws_tmp=$ws_dir/.$ws_base.$ws_who.tmp
  [ ! -e "$ws_tmp" ] && [ ! -L "$ws_tmp" ] || return 1
  if (umask 077 && set -C && exec cat <"$ws_obj" >"$ws_tmp") 2>/dev/null && ws_sum=$(ws_sha256 "$ws_tmp") &&
    [ "$ws_sum" = "$ws_want" ] && mv -fT -- "$ws_tmp" "$ws_pos2" 2>/dev/null; then
    exit 0
  fi
  rm -f -- "$ws_tmp"
  return 1
}

# File $1 as one line ending in a newline, into ws_line; 1 for anything else.
ws_one_line() {
  ws_line= ws_more=
  [ -f "$1" ] || return 1
  { IFS= read -r ws_line && ! IFS= read -r ws_more && [ -z "$ws_more" ]; } 2>/dev/null <"$1"
}

# The SHA-256 of file $1 in hex: openssl where there is one (it uses the CPU's SHA instructions),
# else sha256sum.
ws_sha256() {
  if command -v openssl >/dev/null 2>&1; then
    ws_out=$(openssl dgst -sha256 -r "$1" 2>/dev/null) || return 1
  else
    ws_out=$(sha256sum -b "$1" 2>/dev/null) || return 1
  fi
  ws_out=${ws_out%% *}
  [ ${#ws_out} -eq 64 ] || return 1
  printf '%s\n' "$ws_out"
}

# This process as a temp file's name records its writer (storage/leftovers.ts): pid, start time
# in clock ticks since boot, the host name made readable, and the first 8 hex digits of the
# SHA-256 of "host name NUL boot id NUL pid namespace"; then 8 random hex digits. Sets ws_who.
ws_writer() {
  ws_stat=
  IFS= read -r ws_stat 2>/dev/null </proc/$$/stat || return 1
  set -f
  set -- ${ws_stat##*) }
  set +f
  [ $# -ge 20 ] || return 1
  eval "ws_start=\${20}"
  case $ws_start in '' | *[!0-9]*) return 1 ;; esac
  ws_host= ws_boot=
  IFS= read -r ws_host 2>/dev/null </proc/sys/kernel/hostname && IFS= read -r ws_boot 2>/dev/null </proc/sys/kernel/random/boot_id || return 1
  [ -L /proc/$$/ns/pid ] || return 1
  ws_space=$({ printf '%s\0%s\0' "$ws_host" "$ws_boot" && readlink -n /proc/$$/ns/pid; } 2>/dev/null | sha256sum 2>/dev/null) || return 1
  ws_space=${ws_space%"${ws_space#????????}"}
  case $ws_space in *[!0-9a-f]*) return 1 ;; esac
  [ ${#ws_space} -eq 8 ] || return 1
  case $ws_host in *[!A-Za-z0-9-]*) ws_host=$(printf '%s' "$ws_host" | tr -c 'A-Za-z0-9-' '-') || return 1 ;; esac
  [ ${#ws_host} -le 32 ] || ws_host=$(printf '%.32s' "$ws_host")
  # Eight random hex digits: the start of a fresh random UUID.
  ws_rand=
  IFS= read -r ws_rand 2>/dev/null </proc/sys/kernel/random/uuid || return 1
  ws_rand=${ws_rand%%-*}
  case $ws_rand in *[!0-9a-f]*) return 1 ;; esac
  [ ${#ws_rand} -eq 8 ] || return 1
  ws_who=$$+$ws_start@$ws_host-$ws_space.$ws_rand
}

# push %p --parallel N (commands/push.ts prepareMarkers and takeMarker): an earlier call's
# look-ahead archived %p durably into this archive and left <name>.pushed in the marker directory.
ws_push() {
  ws_parse "$@" || return 1
  [ "$ws_npos" -eq 1 ] || return 1
  ws_given archive || ws_archive=${WALSTREAM_ARCHIVE-}
  ws_given s3-endpoint || ws_endpoint=${AWS_ENDPOINT_URL-}
  ws_given spool || ws_spool=${WALSTREAM_SPOOL-.walstream-push}
  ws_given parallel || ws_parallel=${WALSTREAM_PARALLEL-}
  [ -n "$ws_archive" ] && [ -n "$ws_spool" ] && ws_count "$ws_parallel" && [ "$ws_parallel" -gt 1 ] && ws_quiet_env || return 1
  # Compression is read by the command line's parser, which refuses what it does not take.
  [ -z "${WALSTREAM_COMPRESS+set}" ] || return 1
  ws_name=${ws_pos1##*/}
  ws_segment_name "$ws_name" || return 1
  ws_marker=$ws_spool/$ws_name.pushed
  [ -f "$ws_marker" ] && ws_same_archive "$ws_spool" || return 1
  ws_st=$(stat -L -c '%f' -- "$ws_spool" 2>/dev/null) || return 1
  ws_usable_dir "$ws_spool" "$ws_st" || return 1
  rm -- "$ws_marker" 2>/dev/null || return 1
  exit 0
}

case ${1-} in
  fetch) ws_fetch "$@" ;;
  push) ws_push "$@" ;;
esac
ws_node "$@"
