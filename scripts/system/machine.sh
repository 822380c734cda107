# shellcheck shell=bash
# Sourced helpers: boot throwaway Debian machines with systemd as PID 1 (systemd-nspawn) on an
# overlay of the cached tree (scripts/system/nspawn-tree.sh), run commands inside, tear down.
#   machine_boot NAME [nspawn args...]   boots NAME, sets MACHINE_LEADER[NAME], MACHINE_ROOT[NAME]
#   m NAME CMD...                         runs CMD inside NAME (all namespaces, clean env)
#   machine_stop NAME / machines_cleanup  power off, unmount, delete
# Needs root, systemd-container, mmdebstrap. MACHINE_WORK must name a scratch directory.

declare -gA MACHINE_LEADER=() MACHINE_ROOT=() MACHINE_NSPAWN=()
MACHINE_TREE=${MACHINE_TREE:-}

m() {
  local name=$1; shift
  nsenter -t "${MACHINE_LEADER[$name]}" -a \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

machine_boot() {
  local name=$1; shift
  [ -n "$MACHINE_TREE" ] || MACHINE_TREE=$("$(dirname "${BASH_SOURCE[0]}")/nspawn-tree.sh")
  local d=$MACHINE_WORK/$name
  mkdir -p "$d/upper" "$d/work" "$d/root"
  mount -t overlay overlay -o "lowerdir=$MACHINE_TREE,upperdir=$d/upper,workdir=$d/work" "$d/root"
  MACHINE_ROOT[$name]=$d/root
  systemd-nspawn -D "$d/root" -b --register=no --keep-unit --console=pipe -M "$name" \
    "$@" >"$d/console.log" 2>&1 </dev/null &
  MACHINE_NSPAWN[$name]=$!
  local pid=$! leader="" i c
  # The leader is nspawn's child that is PID 1 in its own PID namespace (nspawn may briefly
  # have another child first).
  for i in $(seq 1 200); do
    leader=""
    for c in $(cat "/proc/$pid/task/$pid/children" 2>/dev/null); do
      if grep -qP '^NSpid:\t\d+\t1$' "/proc/$c/status" 2>/dev/null; then leader=$c; break; fi
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "machine $name: nspawn did not start"; cat "$d/console.log"; return 1; }
  MACHINE_LEADER[$name]=$leader
  local state=""
  local end=$((SECONDS + 120))
  while [ $SECONDS -lt $end ]; do
    state=$(m "$name" systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  case $state in
    running|degraded) ;;
    *) echo "machine $name: not booted (state: $state)"; tail -20 "$d/console.log"; return 1 ;;
  esac
}

machine_stop() {
  local name=$1 pid=${MACHINE_NSPAWN[$1]:-} i
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    m "$name" systemctl poweroff --no-block >/dev/null 2>&1 || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  umount "${MACHINE_ROOT[$name]}" 2>/dev/null || umount -l "${MACHINE_ROOT[$name]}" 2>/dev/null || true
  unset "MACHINE_NSPAWN[$name]"
}

machines_cleanup() {
  local n
  for n in "${!MACHINE_NSPAWN[@]}"; do machine_stop "$n"; done
  [ -n "${MACHINE_WORK:-}" ] && [ "${BERTH_KEEP_MACHINES:-0}" != 1 ] && rm -rf "$MACHINE_WORK"
  return 0
}

# Waits until CMD (inside NAME) succeeds, at most SECONDS.
m_wait() {
  local name=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until m "$name" "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}
