#!/usr/bin/env python3
"""bench/run.py - measure bustd.py against earlyoom and nohang on this machine.

    python3 bench/run.py [--quick] [--reps N] [--skip-pressure] [--only SECTION,...]

Prints a Markdown report on stdout and progress on stderr.  Sections:

  1 memory    VmRSS / RssAnon / VmLck of each idle daemon and of a bare interpreter
  2 cpu       CPU time and wake-ups of the idle daemons over the same window
  3 poll      bustd's cost per poll, in-process (sysinfo path and exact path)
  4 scan      time to rank all processes with 200 and 2,000 extra idle processes
  5 pressure  reaction to a real memory hog in a 512 MiB cgroup v1 (needs root)
  6 startup   time from exec to the first "ready" line

Everything it starts runs in its own process group and is stopped (SIGTERM,
then SIGKILL) on exit, on an exception and on SIGINT/SIGTERM/SIGHUP; every
cgroup it creates is emptied and removed.  It never signals a process it did
not start, and it only lets memory run out inside its own 512 MiB cgroup.
Standard library only.
"""

import argparse
import atexit
import datetime
import errno
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUSTD = os.path.join(ROOT, 'bustd.py')
PY = os.path.realpath(sys.executable)   # the real binary, not a pyenv shim
MiB = 1 << 20
T0 = time.monotonic()

SECTIONS = ('memory', 'cpu', 'poll', 'scan', 'pressure', 'startup', 'wakeup')
SECTION_TITLES = {
    'memory': '1. Memory of the idle daemons',
    'cpu': '2. Idle CPU',
    'poll': '3. Cost per poll (bustd.py, in-process)',
    'scan': '4. Victim scan',
    'pressure': '5. Reaction under real pressure (cgroup v1, 512 MiB)',
    'startup': '6. Start-up',
    'wakeup': '7. Cost per idle wake-up, at the same rate as a minimal Python loop',
}

READY = {'bustd.py': 'ready: watching', 'earlyoom': 'SIGKILL when',
         'nohang': 'Monitoring has started'}
NOHANG_CONF = '/etc/nohang/nohang.conf'
CGROUP_LIMIT = 512 * MiB
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def note(message):
    """Progress line on stderr."""
    sys.stderr.write('[%6.1fs] %s\n' % (time.monotonic() - T0, message))
    sys.stderr.flush()


# ============================================================================
# Cleanup: every process and cgroup the bench creates is registered here
# ============================================================================

class Cleanup(object):
    """Processes (each the leader of its own process group), cgroups, temp dirs."""

    def __init__(self):
        self.procs = []
        self.cgroups = []
        self.tmpdirs = []

    def stop_proc(self, p, grace_s=3.0):
        """SIGTERM the process group p leads, then SIGKILL; reap p.

        p.returncode is None means p is not reaped yet, so its pid (= its
        process group id, start_new_session) cannot belong to anyone else.
        """
        if p.returncode is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def remove_cgroup(self, path):
        """Empty (tasks are ours: kill or move them) and rmdir a cgroup we created."""
        for attempt in range(100):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    note('cannot remove cgroup %s: %s' % (path, exc))
                    break
            for pid in read_pids(path + '/cgroup.procs'):
                # Only bench processes can be in a cgroup the bench made; move
                # the stragglers to the parent (moving is not signalling).
                for p in list(self.procs):
                    if p.pid == pid:
                        self.stop_proc(p, 1.0)
                if attempt > 20:
                    try:
                        write_text(os.path.dirname(path) + '/cgroup.procs', str(pid))
                    except OSError:
                        pass
            time.sleep(0.05)
        else:
            note('WARNING: cgroup %s could not be removed' % path)
        if path in self.cgroups:
            self.cgroups.remove(path)

    def run(self):
        for p in reversed(list(self.procs)):
            try:
                self.stop_proc(p, 2.0)
            except Exception as exc:   # keep cleaning
                note('cleanup: %s' % exc)
        for path in reversed(list(self.cgroups)):
            self.remove_cgroup(path)
        for d in list(self.tmpdirs):
            shutil.rmtree(d, ignore_errors=True)
            self.tmpdirs.remove(d)


CLEAN = Cleanup()


class Critical(object):
    """A section where SIGINT/SIGTERM/SIGHUP wait: a creation and its registration are atomic.

    The signals are not blocked (children would inherit the mask); the
    handler only records them here and the interruption happens on exit.
    """
    depth = 0
    pending = None

    def __enter__(self):
        Critical.depth += 1

    def __exit__(self, *exc):
        Critical.depth -= 1
        if Critical.depth == 0 and Critical.pending is not None:
            signum, Critical.pending = Critical.pending, None
            raise KeyboardInterrupt('signal %d' % signum)


def clean_env():
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(('PYTHON', 'WATCHDOG_')) or key in ('NOTIFY_SOCKET', 'JOURNAL_STREAM',
                                                               'LISTEN_FDS', 'LISTEN_PID'):
            del env[key]
    return env


ENV = clean_env()


def spawn(argv, **kw):
    """Popen in a new session (its own process group), registered for cleanup."""
    kw.setdefault('stdin', subprocess.DEVNULL)
    kw.setdefault('env', ENV)
    with Critical():
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        CLEAN.procs.append(p)
    return p


def make_tmpdir():
    with Critical():
        d = tempfile.mkdtemp(prefix='bustd-bench-')
        CLEAN.tmpdirs.append(d)
    return d


# ============================================================================
# Small helpers
# ============================================================================

def read_text(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def write_text(path, text):
    with open(path, 'w') as f:
        f.write(text)


def read_pids(path):
    return [int(x) for x in (read_text(path, '') or '').split() if x.isdigit()]


def proc_status(pid):
    """Return /proc/PID/status as {key: value text}, or None if gone."""
    return proc_status_path('/proc/%d/status' % pid)


def status_kib(status, key):
    value = status.get(key) if status else None
    return int(value.split()[0]) if value else None


def cpu_counters(pid):
    """Return (cpu ns from schedstat, voluntary, involuntary switches), summed over threads."""
    ns = vol = invol = 0
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return None
    for tid in tids:
        base = '/proc/%d/task/%s' % (pid, tid)
        sched = read_text(base + '/schedstat')
        st = proc_status_path(base + '/status')
        if sched is None or st is None:
            continue
        ns += int(sched.split()[0])
        vol += int(st.get('voluntary_ctxt_switches', 0))
        invol += int(st.get('nonvoluntary_ctxt_switches', 0))
    return ns, vol, invol


def proc_status_path(path):
    """Return a status file as {key: value text}, or None if gone."""
    text = read_text(path)
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(':')
        out[key] = value.strip()
    return out


def median(values):
    return statistics.median(values) if values else None


def fmt(value, spec='%.1f'):
    return 'n/a' if value is None else spec % value


def fmt_stat(values, spec='%.1f'):
    """'median (min–max)' of the values; the one value alone; 'n/a' for none."""
    values = [v for v in values if v is not None]
    if not values:
        return 'n/a'
    if len(values) == 1:
        return spec % values[0]
    return '%s (%s–%s)' % (spec % statistics.median(values), spec % min(values),
                           spec % max(values))


def ratio(a, b, spec='%.2f×'):
    if a is None or b is None or b == 0:
        return 'n/a'
    return spec % (a / b)


def md_table(headers, rows):
    lines = ['| ' + ' | '.join(headers) + ' |',
             '|' + '|'.join('---' for _ in headers) + '|']
    for row in rows:
        lines.append('| ' + ' | '.join(str(c) for c in row) + ' |')
    return '\n'.join(lines)


def wait_exit(p, timeout_s):
    """Wait for p to exit, waking at once (Popen.wait(timeout) polls with sleeps up to
    50 ms); return its exit status, or None on timeout."""
    import select
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(int(timeout_s * 1000)):
                return None
        finally:
            os.close(fd)
    try:
        return p.wait(timeout_s if fd is None else 5)
    except subprocess.TimeoutExpired:
        return None


def run_capture(argv, timeout=20):
    try:
        p = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = p.communicate(timeout=timeout)
        finally:
            CLEAN.stop_proc(p)
        return out.decode('utf-8', 'replace').strip()
    except OSError as exc:
        return 'error: %s' % exc


class Output(object):
    """A thread reading a child's output; each line is stamped with time.monotonic() on arrival."""

    def __init__(self, fd):
        self.fd = fd
        self.lines = []   # (arrival time, text)
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        pending = b''
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b''
            now = time.monotonic()
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b'\n')
            if complete:
                with self.cond:
                    for line in complete:
                        self.lines.append((now, line.decode('utf-8', 'replace')))
                    self.cond.notify_all()
        with self.cond:
            if pending:
                self.lines.append((time.monotonic(), pending.decode('utf-8', 'replace')))
            self.closed = True
            self.cond.notify_all()
        os.close(self.fd)

    def wait_for(self, needle, timeout_s, start=0):
        """Return the first (time, line) containing needle, or None after timeout/EOF."""
        deadline = time.monotonic() + timeout_s
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    if needle in self.lines[i][1]:
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self.cond.wait(left)

    def snapshot(self):
        with self.cond:
            return list(self.lines)

    def join(self, timeout_s=2.0):
        self.thread.join(timeout_s)


class Child(object):
    """A daemon (or the bare interpreter) started in the foreground, its output watched."""

    def __init__(self, name, argv, ready=None):
        self.name = name
        self.argv = argv
        self.ready = ready
        self.p = None
        self.out = None
        self.t_exec = None
        self.t_ready = None

    def start(self):
        r, w = os.pipe()
        try:
            self.t_exec = time.monotonic()
            self.p = spawn(self.argv, stdout=w, stderr=w)
        finally:
            os.close(w)
        self.out = Output(r)
        return self

    def wait_ready(self, timeout_s=30.0):
        if self.ready is None:
            self.t_ready = self.t_exec
            return True
        hit = self.out.wait_for(self.ready, timeout_s)
        self.t_ready = hit[0] if hit else None
        return hit is not None

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def stop(self):
        if self.p is not None:
            CLEAN.stop_proc(self.p)
            self.out.join()

    def tail(self, n=4):
        lines = [l for _, l in self.out.snapshot()] if self.out else []
        return ' / '.join(lines[-n:]) or '(no output)'

    @property
    def pid(self):
        return self.p.pid


# ============================================================================
# The machine, the peers, the daemon command lines
# ============================================================================

def find_peer(name, fallbacks):
    path = shutil.which(name)
    if path:
        return path
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


EARLYOOM = find_peer('earlyoom', ['/usr/bin/earlyoom', '/usr/local/bin/earlyoom'])
NOHANG = find_peer('nohang', ['/usr/sbin/nohang', '/usr/bin/nohang'])


def daemon_specs():
    """[(name, argv or None, ready text, why not)] in report order."""
    specs = [('bustd.py', [PY, BUSTD, '-n'], READY['bustd.py'], None)]
    if EARLYOOM:
        specs.append(('earlyoom', [EARLYOOM, '-m', '10', '-s', '100', '-r', '0'],
                      READY['earlyoom'], None))
    else:
        specs.append(('earlyoom', None, None, 'not installed'))
    if NOHANG and os.path.exists(NOHANG_CONF):
        specs.append(('nohang', [NOHANG, '--monitor', '-c', NOHANG_CONF], READY['nohang'], None))
    else:
        specs.append(('nohang', None, None, 'not installed' if not NOHANG
                      else '%s missing' % NOHANG_CONF))
    return specs


def shebang_interpreter(path):
    try:
        with open(path, 'rb') as f:
            first = f.readline().decode('utf-8', 'replace')
    except OSError:
        return None
    if not first.startswith('#!'):
        return None
    words = first[2:].split()
    if not words:
        return None
    if os.path.basename(words[0]) == 'env' and len(words) > 1:
        return shutil.which(words[1])
    return words[0]


def bare_specs():
    """The bare interpreter sleepers: ours, and nohang's if it is another one."""
    code = 'import time; time.sleep(1e6)'
    specs = [('bare python3 -I -S', [PY, '-I', '-S', '-c', code])]
    nohang_py = shebang_interpreter(NOHANG) if NOHANG else None
    if nohang_py and os.path.realpath(nohang_py) != PY and os.access(nohang_py, os.X_OK):
        specs.append(('bare %s -I -S (nohang\'s)' % nohang_py,
                      [nohang_py, '-I', '-S', '-c', code]))
    return specs


def meminfo():
    out = {}
    for line in (read_text('/proc/meminfo', '') or '').splitlines():
        key, _, value = line.partition(':')
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def cpu_model():
    for line in (read_text('/proc/cpuinfo', '') or '').splitlines():
        if line.lower().startswith('model name'):
            return line.split(':', 1)[1].strip()
    return 'unknown'


def git_state():
    try:
        rev = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain', '--', 'bustd.py'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return rev + (' + uncommitted changes to bustd.py' if dirty else '')


def file_digest(path):
    import hashlib
    try:
        with open(path, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        return 'unreadable'


def header(argv):
    mi = meminfo()
    lines = ['# bustd.py benchmark', '']
    eo = run_capture([EARLYOOM, '-v']).splitlines()[0] if EARLYOOM else 'not installed'
    nh = 'not installed'
    if NOHANG:
        nh = subprocess.run(['dpkg-query', '-W', 'nohang'], capture_output=True,
                            text=True).stdout.strip().replace('\t', ' ') or \
            'installed at %s (no dpkg record)' % NOHANG
    bustd_version = re.search(r"__version__ = '([^']+)'", read_text(BUSTD, '') or '')
    rows = [
        ('date', datetime.datetime.now().astimezone().isoformat(timespec='seconds')),
        ('command', '`%s`' % ' '.join(shlex.quote(a) for a in ['python3'] + argv)),
        ('kernel', os.uname().release),
        ('Python', '%s (%s)' % (sys.version.split()[0], PY)),
        ('CPU', '%s, %d cores' % (cpu_model(), os.cpu_count() or 0)),
        ('RAM', '%.1f GiB, swap %.1f GiB' % (mi.get('MemTotal', 0) / 1048576.0,
                                             mi.get('SwapTotal', 0) / 1048576.0)),
        ('load average at start', (read_text('/proc/loadavg', '?') or '?').strip()),
        ('bustd.py', '%s, git %s, sha256 %s' % (
            bustd_version.group(1) if bustd_version else '?', git_state(),
            file_digest(BUSTD))),
        ('earlyoom', '%s (%s)' % (eo, EARLYOOM) if EARLYOOM else 'not installed'),
        ('nohang', '%s (%s)' % (nh, NOHANG) if NOHANG else 'not installed'),
    ]
    lines.append(md_table(['', ''], rows))
    lines.append('')
    lines.append('Timings are compared only as ratios within this run.  "a (b–c)" is '
                 'the median (min–max) of the runs.  Daemons are started with the '
                 'interpreter above directly (not through a pyenv shim), in the '
                 'foreground, each in its own process group.')
    return '\n'.join(lines)


def import_bustd():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import bustd
    return bustd


# ============================================================================
# Sections 1 and 2: the idle daemons, all running at once
# ============================================================================

def idle_sessions(opts, want_memory, want_cpu):
    reps = opts.reps_idle
    idle_s = opts.idle_s
    cpu_s = opts.cpu_s
    specs = daemon_specs()
    bares = bare_specs()
    mem = {}    # name -> {'VmRSS': [...], ...}
    cpu = {}    # name -> {'ms_per_h': [...], 'wakeups': [...], 'invol': [...]}
    problems = {}
    for rep in range(reps):
        note('idle session %d/%d: starting %s' % (
            rep + 1, reps, ', '.join(n for n, a, _, _ in specs if a)))
        children = []
        try:
            for name, argv, ready, _ in specs:
                if argv:
                    children.append(Child(name, argv, ready).start())
            for name, argv in bares:
                children.append(Child(name, argv).start())
            for c in children:
                if not c.wait_ready(30):
                    problems[c.name] = 'no ready line in 30 s: %s' % c.tail()
            live = [c for c in children if c.t_ready is not None]
            note('  ready; idle for %g s' % idle_s)
            time.sleep(idle_s)
            for c in live:
                if not c.alive():
                    problems[c.name] = 'exited (%s): %s' % (c.p.returncode, c.tail())
                    continue
                st = proc_status(c.pid)
                m = mem.setdefault(c.name, {'VmRSS': [], 'RssAnon': [], 'VmLck': [],
                                            'Threads': []})
                for key in ('VmRSS', 'RssAnon', 'VmLck'):
                    m[key].append(status_kib(st, key))
                m['Threads'].append(int(st.get('Threads', '0')) if st else None)
            if want_cpu:
                note('  measuring CPU for %g s' % cpu_s)
                before = dict((c.name, cpu_counters(c.pid)) for c in live if c.alive())
                t0 = time.monotonic()
                time.sleep(cpu_s)
                after = dict((c.name, cpu_counters(c.pid)) for c in live if c.alive())
                elapsed = time.monotonic() - t0
                for name, b in before.items():
                    a = after.get(name)
                    if a is None or b is None:
                        problems[name] = 'exited during the CPU window'
                        continue
                    entry = cpu.setdefault(name, {'ms_per_h': [], 'wakeups': [],
                                                  'invol': [], 'cpu_ms': [], 'per_wake': []})
                    entry['per_wake'].append((a[0] - b[0]) / 1e3 / (a[1] - b[1])
                                             if a[1] > b[1] else None)
                    entry['cpu_ms'].append((a[0] - b[0]) / 1e6)
                    entry['ms_per_h'].append((a[0] - b[0]) / 1e6 * 3600.0 / elapsed)
                    entry['wakeups'].append((a[1] - b[1]) / elapsed)
                    entry['invol'].append((a[2] - b[2]) / elapsed)
        finally:
            for c in children:
                c.stop()
    return specs, bares, mem, cpu, problems


def report_memory(specs, bares, mem, problems, opts):
    out = ['## ' + SECTION_TITLES['memory'], '']
    out.append('From /proc/PID/status after %g s idle (the pid that was started; bustd.py '
               're-execs itself as `python3 -I -S -c ...` in that pid), %d run(s), MiB.'
               % (opts.idle_s, opts.reps_idle))
    out.append('')
    rows = []
    names = [n for n, _, _, _ in specs] + [n for n, _ in bares]
    cmd = dict((n, a) for n, a, _, _ in specs)
    cmd.update(dict(bares))
    why_not = dict((n, w) for n, _, _, w in specs if w)

    def mib(values):
        return [v / 1024.0 if v is not None else None for v in values]

    for name in names:
        if name in why_not:
            rows.append([name, why_not[name], '', '', '', ''])
            continue
        m = mem.get(name)
        if not m:
            rows.append([name, 'no data: %s' % problems.get(name, '?'), '', '', '', ''])
            continue
        argv = ' '.join(shlex.quote(os.path.basename(a) if i == 0 else a)
                        for i, a in enumerate(cmd[name]))
        rows.append([name, fmt_stat(mib(m['VmRSS']), '%.2f'), fmt_stat(mib(m['RssAnon']), '%.2f'),
                     fmt_stat(mib(m['VmLck']), '%.2f'), fmt_stat(m['Threads'], '%d'),
                     '`%s`' % argv.replace(BUSTD, 'bustd.py').replace(ROOT + '/', '')])
    out.append(md_table(['process', 'VmRSS', 'RssAnon', 'VmLck', 'threads', 'command'], rows))
    out.append('')
    out.append('VmLck is the size of the locked mappings: after mlockall(MCL_CURRENT|'
               'MCL_FUTURE|MCL_ONFAULT) it counts whole mappings, of which only the touched '
               'pages are resident, so it can exceed VmRSS.')
    out.append('')

    def med(name, key):
        m = mem.get(name)
        vals = [v for v in (m or {}).get(key, []) if v is not None]
        return statistics.median(vals) / 1024.0 if vals else None

    bare = bares[0][0]
    rows = []
    for key in ('VmRSS', 'RssAnon'):
        b = med('bustd.py', key)
        e, n, f = med('earlyoom', key), med('nohang', key), med(bare, key)
        rows.append([key, ratio(b, e) if e else ('n/a (%s)' % why_not.get('earlyoom', 'no data')),
                     ratio(b, n) if n else ('n/a (%s)' % why_not.get('nohang', 'no data')),
                     ratio(b, f), fmt(None if b is None or f is None else b - f, '%+.2f MiB')])
    out.append('Ratios of the medians:')
    out.append('')
    out.append(md_table(['metric', 'bustd.py / earlyoom', 'bustd.py / nohang',
                         'bustd.py / bare interpreter', 'bustd.py − bare'], rows))
    if len(bares) > 1 and mem.get('nohang'):
        n, nb = med('nohang', 'VmRSS'), med(bares[1][0], 'VmRSS')
        out.append('')
        out.append('nohang runs under %s: nohang − its bare interpreter = %s VmRSS.'
                   % (bares[1][1][0], fmt(None if n is None or nb is None else n - nb,
                                          '%+.2f MiB')))
    extra = ['%s: %s' % (k, v) for k, v in sorted(problems.items())]
    if extra:
        out += [''] + ['Problem: ' + x for x in extra]
    return '\n'.join(out)


def report_cpu(specs, bares, cpu, problems, opts):
    out = ['## ' + SECTION_TITLES['cpu'], '']
    out.append('All daemons and the bare interpreter running at once, idle (plenty of free '
               'memory), over the same %g s window after %g s of settling, %d run(s).  CPU '
               'from the first field of /proc/PID/task/*/schedstat, wake-ups from '
               'voluntary_ctxt_switches, both summed over threads.'
               % (opts.cpu_s, opts.idle_s, opts.reps_idle))
    out.append('')
    why_not = dict((n, w) for n, _, _, w in specs if w)
    names = [n for n, _, _, _ in specs] + [n for n, _ in bares]
    eo = cpu.get('earlyoom')
    eo_cpu = median(eo['ms_per_h']) if eo else None
    eo_wake = median(eo['wakeups']) if eo else None
    rows = []
    for name in names:
        if name in why_not:
            rows.append([name, why_not[name], '', '', '', '', ''])
            continue
        c = cpu.get(name)
        if not c:
            rows.append([name, 'no data: %s' % problems.get(name, '?'), '', '', '', '', ''])
            continue
        rows.append([name, fmt_stat(c['ms_per_h'], '%.0f'), fmt_stat(c['wakeups'], '%.2f'),
                     fmt_stat(c['per_wake'], '%.0f'), fmt_stat(c['invol'], '%.2f'),
                     ratio(median(c['ms_per_h']), eo_cpu) if eo_cpu else 'n/a',
                     ratio(median(c['wakeups']), eo_wake) if eo_wake else 'n/a'])
    out.append(md_table(['process', 'CPU ms per hour', 'wake-ups/s (voluntary)',
                         'CPU µs per wake-up', 'involuntary switches/s', 'CPU vs earlyoom',
                         'wake-ups vs earlyoom'], rows))
    return '\n'.join(out)


# ============================================================================
# Section 3: cost per poll, in-process
# ============================================================================

def time_per_call_us(fn, iterations, repeats):
    fn()   # warm
    out = []
    perf = time.perf_counter_ns
    for _ in range(repeats):
        t0 = perf()
        for _ in range(iterations):
            fn()
        out.append((perf() - t0) / iterations / 1000.0)
    return out


def section_poll(opts):
    bustd = import_bustd()
    calls = bustd.load_kernel_calls()
    sensor = bustd.MachineSensor('/proc', calls)
    warnings = sensor.check()
    reading = bustd.Reading()
    sensor.read_exact(reading, None)
    total, swap = reading.mem_total_kib, reading.swap_total_kib
    th = bustd.compute_thresholds(bustd.Settings(), total, swap)
    decide = bustd.decide

    def cheap():
        sensor.read(reading, th)
        decide(reading, th)

    def exact():
        sensor.read_exact(reading, th)
        decide(reading, th)

    def exact_psi():
        sensor.read_exact(reading, None)   # th=None: PSI is read too
        decide(reading, th)

    cheap()
    cheap_is_cheap = not reading.exact
    avail_lower = reading.mem_available_kib
    exact()
    psi_read_in_b = reading.psi_some_avg10 is not None
    exact_psi()
    psi_read_in_c = reading.psi_some_avg10 is not None
    n, r = opts.poll_iterations, opts.poll_repeats
    note('poll: %d x %d iterations per path' % (r, n))
    rows = []
    cases = []
    if calls.sysinfo is not None:
        cases.append(('sysinfo(2) alone (ctypes call)', lambda: calls.sysinfo(reading), n))
    cases += [
        ('(a) cheap path: `sensor.read(reading, th)` + `decide`' +
         ('' if cheap_is_cheap else ' — NOTE: took the exact path'), cheap, n),
        ('(b) exact path: `sensor.read_exact(reading, th)` + `decide`' +
         (' (PSI read)' if psi_read_in_b else ' (/proc/meminfo; PSI skipped: memory far '
                                              'above --psi-mem-max)'), exact, max(1, n // 5)),
        ('(b\') exact path with PSI: `sensor.read_exact(reading, None)` + `decide`' +
         ('' if psi_read_in_c else ' (no PSI here)'), exact_psi, max(1, n // 5)),
    ]
    cg_note = None
    cg = None
    try:
        parent = own_memory_cgroup()
        cg = make_cgroup(parent, 'bustd-bench-%d-poll' % os.getpid(), CGROUP_LIMIT)
        cg_sensor = bustd.CgroupSensor(cg, 1, bustd.MachineSensor('/proc', calls), None)
        cg_sensor.check()
        cg_reading = bustd.Reading()
        cg_sensor.read_exact(cg_reading, None)
        cg_th = bustd.compute_thresholds(bustd.Settings(), cg_reading.mem_total_kib,
                                         cg_reading.swap_total_kib)

        def cg_cheap():
            cg_sensor.read(cg_reading, cg_th)
            decide(cg_reading, cg_th)

        def cg_exact():
            cg_sensor.read_exact(cg_reading, cg_th)
            decide(cg_reading, cg_th)

        cases += [
            ('(c) cgroup v1, 512 MiB limit, empty: `CgroupSensor.read` + `decide` (cheap: '
             'memory.usage_in_bytes)', cg_cheap, n),
            ('(d) cgroup v1: `CgroupSensor.read_exact` + `decide` (what each poll costs '
             'from 85 % usage on)', cg_exact, max(1, n // 5)),
        ]
    except (RuntimeError, OSError, AttributeError, TypeError) as exc:
        cg_note = 'cgroup rows skipped: %s' % exc
    try:
        measured = []
        for label, fn, iters in cases:
            measured.append((label, time_per_call_us(fn, iters, r), iters))
    finally:
        if cg is not None:
            CLEAN.remove_cgroup(cg)
    for label, values, iters in measured:
        med_us = statistics.median(values)
        rows.append([label, fmt_stat(values, '%.2f'), '%d × %d' % (r, iters),
                     '%.0f' % (med_us * 3600 / 1000.0)])
    out = ['## ' + SECTION_TITLES['poll'], '']
    out.append('`calls = bustd.load_kernel_calls(); sensor = bustd.MachineSensor(\'/proc\', '
               'calls); sensor.check(); th = bustd.compute_thresholds(bustd.Settings(), %d, '
               '%d)`; available memory %.1f GiB (cheap lower bound %.1f GiB), SIGTERM level '
               '%.1f GiB, exact readings below %.1f GiB.  Median (min–max) of the repeats, '
               'microseconds per call.'
               % (total, swap, reading.mem_available_kib / 1048576.0, avail_lower / 1048576.0,
                  th.mem_term_kib / 1048576.0, th.trigger_kib / 1048576.0))
    out.append('')
    out.append(md_table(['step', 'µs per call', 'repeats × iterations',
                         'CPU ms per hour at 1 poll/s'], rows))
    out.append('')
    out.append('These are warm figures (the same call in a tight loop).  A real idle poll '
               'comes after ~1 s of sleep with cold caches and also runs the daemon loop '
               'around the read; section 2\'s "CPU µs per wake-up" is the real cost.')
    if warnings:
        out += ['', 'Sensor warnings: ' + '; '.join(warnings)]
    if cg_note:
        out += ['', cg_note]
    return '\n'.join(out)


# ============================================================================
# Section 4: victim scan with many idle processes
# ============================================================================

SLEEPERS = r'''
import os, signal, sys
n = int(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
kids = []
error = ''
for i in range(n):
    if stop:
        break
    try:
        kids.append(os.posix_spawn('/bin/sleep', ['sleep', '100000'], {}))
    except OSError as exc:
        error = str(exc)
        break
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
os.write(1, ('ready %d %s\n' % (len(kids), error)).encode())
if not stop:
    signal.sigwait({signal.SIGTERM})
for pid in kids:
    try:
        os.kill(pid, signal.SIGKILL)   # our own unreaped children
    except OSError:
        pass
for pid in kids:
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass
'''


def count_processes():
    return sum(1 for n in os.listdir('/proc') if n.isdigit())


def start_sleepers(n):
    c = Child('sleepers', [PY, '-I', '-S', '-c', SLEEPERS, str(n)], 'ready').start()
    hit = c.out.wait_for('ready', 120)
    if not hit:
        c.stop()
        raise RuntimeError('sleeper helper did not start: %s' % c.tail())
    words = hit[1].split(None, 2)
    started = int(words[1])
    if started != n:
        c.stop()
        raise RuntimeError('only %d of %d sleepers started: %s' % (
            started, n, words[2] if len(words) > 2 else ''))
    return c


def earlyoom_scan_times(duration_s, tmpdir, tag):
    """Run earlyoom -d --dryrun at a level it is always below; return its own scan timings."""
    path = os.path.join(tmpdir, 'earlyoom-%s.log' % tag)
    with open(path, 'wb') as f:
        argv = [EARLYOOM, '-d', '--dryrun', '-m', '99', '-s', '100', '-r', '0']
        p = spawn(argv, stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
    finally:
        CLEAN.stop_proc(p)
    text = read_text(path, '') or ''
    if 'dryrun mode enabled' not in text:
        raise RuntimeError('earlyoom did not confirm dry-run mode')
    times, counts = [], []
    pids = 0
    for line in text.splitlines():
        if line.startswith('pid '):
            pids += 1
            continue
        m = re.search(r'selecting victim took (\d+\.\d+) ms', line)
        if m:
            times.append(float(m.group(1)))
            counts.append(pids)
            pids = 0
    return times[1:], counts[1:], len(times)   # the first one is the start-up self-test


def section_scan(opts):
    bustd = import_bustd()
    policy = bustd.Policy(bustd.Settings())
    sizes = [0, 200, 2000]
    nproc_limit = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    pid_max = int((read_text('/proc/sys/kernel/pid_max', '32768') or '32768').strip())
    base = count_processes()
    need = base + sizes[-1] + 500
    out = ['## ' + SECTION_TITLES['scan'], '']
    if (nproc_limit != resource.RLIM_INFINITY and nproc_limit < need) or pid_max < need:
        out.append('Skipped: %d processes needed, ulimit -u %s, pid_max %d.'
                   % (need, nproc_limit, pid_max))
        return '\n'.join(out)
    eo_ok = EARLYOOM is not None and '--dryrun' in run_capture([EARLYOOM, '-h'])
    tmpdir = make_tmpdir()
    helpers = []
    rows = []
    extra = 0
    try:
        for size in sizes:
            if size > extra:
                note('scan: starting %d more idle `sleep` processes' % (size - extra))
                helpers.append(start_sleepers(size - extra))
                extra = size
                time.sleep(0.5)
            total = count_processes()
            note('scan: %d processes; timing scan_processes + pick_victim' % total)
            times, found = [], 0
            for _ in range(opts.scan_repeats):
                t0 = time.perf_counter()
                procs = bustd.scan_processes('/proc', policy)
                victim, _ = bustd.pick_victim(procs, False)
                times.append((time.perf_counter() - t0) * 1000.0)
                found = len(procs)
            # The daemon's kill path uses find_victim (reads oom_score of every
            # process, whole records only for the few that can win), where it exists.
            fv_times, fv_same = [], []
            if hasattr(bustd, 'find_victim'):
                for _ in range(opts.scan_repeats):
                    t0 = time.perf_counter()
                    fv, _ = bustd.find_victim('/proc', policy)
                    fv_times.append((time.perf_counter() - t0) * 1000.0)
                    ref, _ = bustd.pick_victim(bustd.scan_processes('/proc', policy), False)
                    fv_same.append((fv.pid if fv else None) == (ref.pid if ref else None))
            note('scan: timing `bustd.py --list` end to end')
            lists = []
            for _ in range(opts.list_repeats):
                t0 = time.monotonic()
                p = spawn([PY, BUSTD, '--list'], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
                try:
                    rc = wait_exit(p, 120)
                finally:
                    CLEAN.stop_proc(p)
                lists.append((time.monotonic() - t0) * 1000.0 if rc == 0 else None)
            if eo_ok:
                note('scan: earlyoom -d --dryrun for %g s' % opts.eo_scan_s)
                try:
                    eo_times, eo_counts, eo_n = earlyoom_scan_times(opts.eo_scan_s, tmpdir, size)
                    eo_cell = fmt_stat(eo_times, '%.2f') + ' (%d scans)' % len(eo_times)
                    eo_seen = fmt_stat(eo_counts, '%d')
                except RuntimeError as exc:
                    eo_cell, eo_seen = 'error: %s' % exc, ''
                    eo_times = []
            else:
                eo_cell = 'not installed' if EARLYOOM is None else 'no --dryrun: not run'
                eo_seen, eo_times = '', []
            b_med = median(times)
            fv_med = median(fv_times)
            rows.append(['+%d' % size, total, found, fmt_stat(times, '%.2f'),
                         (fmt_stat(fv_times, '%.2f') + ('' if all(fv_same) else
                                                        ' (victim differs %d/%d)' % (
                                                            fv_same.count(False), len(fv_same))))
                         if fv_times else 'n/a',
                         fmt_stat(lists, '%.0f'), eo_cell, eo_seen,
                         ratio(b_med, median(eo_times)) if eo_times else 'n/a',
                         ratio(fv_med, median(eo_times)) if eo_times and fv_med else 'n/a'])
    finally:
        for h in reversed(helpers):
            h.stop()
    out.append('bustd: `bustd.scan_processes(\'/proc\', bustd.Policy(bustd.Settings()))` + '
               '`bustd.pick_victim(...)` in-process, %d repeats; `--list`: `python3 bustd.py '
               '--list` wall time from exec to exit, %d runs.  earlyoom 1.7 prints its own '
               '"selecting victim took X ms" with `-d`; it was run as `earlyoom -d --dryrun '
               '-m 99 -s 100 -r 0` (always below its level, so it scans every 100 ms and '
               'sends nothing; its start-up self-test scan is left out) for %g s with '
               'stderr to a file.  earlyoom\'s figure includes printing one debug line per '
               'process.  `bustd.find_victim(\'/proc\', policy)` is what the daemon\'s kill '
               'path calls (oom_score of every process, whole records only for those that '
               'can still win); each of its runs was checked against scan_processes + '
               'pick_victim for the same victim.  Milliseconds.' % (
                   opts.scan_repeats, opts.list_repeats, opts.eo_scan_s))
    out.append('')
    out.append(md_table(['extra idle processes', 'processes on the machine',
                         'bustd saw (user space)', 'bustd scan_processes + pick_victim (ms)',
                         'bustd find_victim (ms)', 'bustd --list end to end (ms)',
                         'earlyoom "selecting victim took" (ms)',
                         'earlyoom debug lines per scan', 'scan + pick / earlyoom',
                         'find_victim / earlyoom'], rows))
    return '\n'.join(out)


# ============================================================================
# Section 5: reaction under real pressure in a 512 MiB cgroup v1
# ============================================================================

HOG = r'''
import os, sys, time
rate = float(sys.argv[1])          # MiB/s; 0 = full speed
cg = sys.argv[2]
def say(text):
    os.write(1, text.encode() + b'\n')
mine = ''
for line in open('/proc/self/cgroup'):
    parts = line.rstrip('\n').split(':', 2)
    if len(parts) == 3 and 'memory' in parts[1].split(','):
        mine = parts[2]
limit = int(open(cg + '/memory.limit_in_bytes').read())
if not mine or mine == '/' or not cg.rstrip('/').endswith(mine.rstrip('/')) or limit > (1 << 30):
    say('E refusing to allocate: memory cgroup %r, limit %d' % (mine, limit))
    sys.exit(3)
ufd = os.open(cg + '/memory.usage_in_bytes', os.O_RDONLY)
def usage():
    return int(os.pread(ufd, 64, 0))
chunks = []
t0 = time.monotonic()
say('S %.6f %d %d' % (t0, usage(), limit))
n = 0
while n < 1024:                    # never more than 1 GiB, whatever the limit
    chunks.append(b'\x01' * 1048576)
    n += 1
    say('R %.6f %d %d' % (time.monotonic(), n, usage()))
    if rate > 0:
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
say('E cap of 1024 MiB reached')
time.sleep(10)
'''

HOG_WRAPPER = 'echo $$ > "$0/cgroup.procs" && exec "$1" -I -S -c "$2" "$3" "$0"'


def own_memory_cgroup():
    """Return the directory of our own cgroup v1 memory cgroup, or raise RuntimeError."""
    mount = root = None
    for line in (read_text('/proc/self/mountinfo', '') or '').splitlines():
        left, _, right = line.partition(' - ')
        f, t = left.split(), right.split()
        if len(f) >= 5 and len(t) >= 3 and t[0] == 'cgroup' and 'memory' in t[2].split(','):
            mount, root = f[4], f[3]
            break
    if mount is None:
        raise RuntimeError('no cgroup v1 memory hierarchy is mounted')
    rel = None
    for line in (read_text('/proc/self/cgroup', '') or '').splitlines():
        parts = line.split(':', 2)
        if len(parts) == 3 and 'memory' in parts[1].split(','):
            rel = parts[2]
    if rel is None:
        raise RuntimeError('/proc/self/cgroup has no memory line')
    if root != '/' and rel.startswith(root):
        rel = rel[len(root):]
    path = os.path.normpath(os.path.join(mount, rel.lstrip('/')))
    if not os.path.isfile(path + '/memory.usage_in_bytes'):
        raise RuntimeError('%s is not a memory cgroup directory' % path)
    return path


def make_cgroup(parent, name, limit):
    path = os.path.join(parent, name)
    with Critical():
        os.mkdir(path)
        CLEAN.cgroups.append(path)
    write_text(path + '/memory.limit_in_bytes', str(limit))
    got = int(read_text(path + '/memory.limit_in_bytes').strip())
    if got != limit:
        raise RuntimeError('cgroup limit reads back %d, not %d' % (got, limit))
    return path


def oom_kill_count(cg):
    for line in (read_text(cg + '/memory.oom_control', '') or '').splitlines():
        if line.startswith('oom_kill '):
            return int(line.split()[1])
    return None


def signal_name(returncode):
    if returncode is None:
        return 'running'
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return 'signal %d' % -returncode
    return 'exit %d' % returncode


KILL_RE = re.compile(r'(?:^|: )kill: (SIG\w+) (?:pgrp=\d+ )?pid=(\d+).*?'
                     r'mem_available=([\d.]+)(KiB|MiB|GiB)')
LATENCY_RE = re.compile(r'latency: ([\d.]+) ms from the deciding reading to the signal \((.*)\)')
EXITED_RE = re.compile(r'(?:^|: )exited: pid=(\d+) .*?signal=(\w+) after=([\d.]+)s')


def to_mib(value, unit):
    return float(value) * {'KiB': 1 / 1024.0, 'MiB': 1.0, 'GiB': 1024.0}[unit]


def pressure_run(parent, tag, rate, watcher):
    """One hog in a fresh 512 MiB cgroup, watched by `watcher` (name, argv, ready) or None."""
    res = {'rate': rate, 'watcher': watcher[0] if watcher else 'none'}
    cg = make_cgroup(parent, 'bustd-bench-%d-%s' % (os.getpid(), tag), CGROUP_LIMIT)
    daemon = hog = None
    try:
        if watcher:
            name, argv, ready = watcher
            argv = [a.replace('{cg}', cg) for a in argv]
            daemon = Child(name, argv, ready).start()
            if not daemon.wait_ready(30):
                res['error'] = '%s not ready: %s' % (name, daemon.tail())
                return res
        oom_before = oom_kill_count(cg)
        r, w = os.pipe()
        try:
            hog = Child('hog', ['/bin/sh', '-c', HOG_WRAPPER, cg, PY, HOG, repr(rate)])
            hog.t_exec = time.monotonic()
            hog.p = spawn(hog.argv, stdout=w, stderr=w)
        finally:
            os.close(w)
        hog.out = Output(r)
        timeout = (CGROUP_LIMIT / MiB) / rate * 2 + 15 if rate else 15
        try:
            hog.p.wait(timeout)
        except subprocess.TimeoutExpired:
            res['error'] = 'hog still alive after %.0f s (nobody killed it)' % timeout
        hog.stop()
        res['hog_exit'] = signal_name(hog.p.returncode)
        kill = exited = None
        if daemon is not None and name == 'bustd.py':
            hit = daemon.out.wait_for('kill:', 0.5)
            if hit:
                daemon.out.wait_for('exited:', 3.0)
            for t, line in daemon.out.snapshot():
                m = KILL_RE.search(line)
                if m and int(m.group(2)) == hog.pid and kill is None:
                    kill = (t, m.group(1), to_mib(m.group(3), m.group(4)), line)
                m = LATENCY_RE.search(line)
                if m and kill is not None and 'latency_ms' not in res:
                    res['latency_ms'], res['latency_how'] = float(m.group(1)), m.group(2)
                m = EXITED_RE.search(line)
                if m and int(m.group(1)) == hog.pid and exited is None:
                    exited = (t, m.group(2), float(m.group(3)))
        oom_after = oom_kill_count(cg)
        max_usage = int(read_text(cg + '/memory.max_usage_in_bytes').strip())
        res['kernel_oom_kills'] = (None if oom_before is None or oom_after is None
                                   else oom_after - oom_before)
        res['max_usage'] = max_usage
        res['headroom_mib'] = (CGROUP_LIMIT - max_usage) / float(MiB)
        records, start = [], None
        for t, line in hog.out.snapshot():
            words = line.split()
            if words[:1] == ['R'] and len(words) == 4:
                records.append((float(words[1]), int(words[2]), int(words[3])))
            elif words[:1] == ['S'] and len(words) == 4:
                start = (float(words[1]), int(words[2]))
            elif words[:1] == ['E']:
                res['hog_note'] = line
        res['hog_start_usage_mib'] = start[1] / float(MiB) if start else None
        res['hog_alloc_mib'] = records[-1][1] if records else 0
        if records and len(records) > 1:
            span = records[-1][0] - records[0][0]
            res['hog_rate'] = (records[-1][1] - records[0][1]) / span if span > 0 else None
        # bustd's SIGTERM level: 10 % of the limit available, i.e. usage >= limit - 10 %.
        term_kib = int(CGROUP_LIMIT // 1024 * 10 / 100)
        threshold = CGROUP_LIMIT - term_kib * 1024
        cross = next((rec for rec in records if rec[2] >= threshold), None)
        t_cross = cross[0] if cross else None
        if cross is None and max_usage >= threshold and len(records) >= 2:
            # Killed between the crossing allocation and its record.
            last = records[-1]
            if rate and start:
                # Rate-limited: the next chunk started on schedule (or at once if late).
                t_cross = max(last[0], start[0] + last[1] / float(rate))
                res['cross_extrapolated'] = True
            else:
                # Full speed: extrapolate the usage slope of the last records.
                first = records[max(0, len(records) - 20)]
                if last[0] > first[0] and last[2] > first[2]:
                    slope = (last[2] - first[2]) / (last[0] - first[0])
                    t_cross = last[0] + (threshold - last[2]) / slope
                    res['cross_extrapolated'] = True
        res['t_cross'] = t_cross
        if kill:
            res['bustd_signal'] = kill[1]
            res['bustd_saw_mib'] = kill[2]
            res['delay_ms'] = (kill[0] - t_cross) * 1000.0 if t_cross is not None else None
            before = [rec for rec in records if rec[0] <= kill[0]]
            res['usage_at_kill_mib'] = before[-1][2] / float(MiB) if before else None
        if exited:
            res['exit_after_ms'] = exited[2] * 1000.0
            if kill:
                res['kill_to_exited_ms'] = (exited[0] - kill[0]) * 1000.0
        killed_by_watcher = kill is not None and res['kernel_oom_kills'] == 0 and \
            res['hog_exit'] in ('SIGTERM', 'SIGKILL')
        res['first'] = killed_by_watcher
        if killed_by_watcher:
            res['killer'] = '%s (%s)' % (res['watcher'], kill[1])
        elif res['kernel_oom_kills']:
            res['killer'] = 'kernel OOM killer' + (
                ' (after bustd %s)' % kill[1] if kill else '')
        else:
            res['killer'] = 'unknown (%s)' % res['hog_exit']
        if daemon is not None and not daemon.alive():
            res['error'] = '%s exited: %s' % (res['watcher'], daemon.tail())
        return res
    finally:
        if hog is not None:
            hog.stop()
        if daemon is not None:
            daemon.stop()
        CLEAN.remove_cgroup(cg)


def rate_label(rate):
    if not rate:
        return 'full speed'
    if rate >= 1024:
        return '%g GiB/s' % (rate / 1024.0)
    return '%g MiB/s' % rate


def section_pressure(opts):
    out = ['## ' + SECTION_TITLES['pressure'], '']
    try:
        parent = own_memory_cgroup()
    except RuntimeError as exc:
        out.append('Skipped: %s.' % exc)
        return '\n'.join(out)
    if not os.access(parent, os.W_OK):
        out.append('Skipped: cannot create cgroups under %s (not root?).' % parent)
        return '\n'.join(out)
    rates = [100, 1024, 0]
    # -V: bustd prints the time from the deciding reading to the signal.
    bustd_watch = ('bustd.py', [PY, BUSTD, '-n', '-V', '--cgroup', '{cg}'], READY['bustd.py'])
    results = []
    errors = []
    for rate in rates:
        for i in range(opts.pressure_runs):
            note('pressure: %s, run %d/%d' % (rate_label(rate), i + 1, opts.pressure_runs))
            try:
                res = pressure_run(parent, '%d-%d' % (rate, i), rate, bustd_watch)
            except (OSError, RuntimeError) as exc:
                res = {'rate': rate, 'watcher': 'bustd.py', 'error': str(exc)}
            results.append(res)
            if res.get('error'):
                errors.append('%s run %d: %s' % (rate_label(rate), i + 1, res['error']))
                note('  error: %s' % res['error'])
            else:
                note('  killer: %s, least memory left %.1f MiB, delay %s ms' % (
                    res.get('killer'), res.get('headroom_mib', -1),
                    fmt(res.get('delay_ms'))))
    out.append('For each run: a fresh cgroup v1 `%s/bustd-bench-*` with memory.limit_in_bytes '
               '= 512 MiB (no swap), `python3 bustd.py -n -V --cgroup <dir>` started outside it '
               'and waited for until "ready: watching", then a Python hog put into the cgroup '
               'before it allocates (`sh -c \'echo $$ > <dir>/cgroup.procs; exec python3 ...\'`) '
               'appending 1 MiB chunks at the rate given, logging CLOCK_MONOTONIC, MiB '
               'allocated and memory.usage_in_bytes after each chunk.  "Killed first": bustd '
               'logged `kill:` for the hog, the hog died of that signal and memory.oom_control '
               'oom_kill did not move.  Least memory left = 512 MiB − memory.max_usage_in_bytes. '
               ' Delay = arrival of bustd\'s `kill:` line on the bench\'s reader thread − the '
               'hog\'s first record with usage ≥ 90 %% of the limit (bustd\'s SIGTERM level, '
               '10 %% available; the record is written within one 1 MiB allocation of the '
               'crossing).' % parent)
    out.append('')
    rows = []
    for rate in rates:
        runs = [r for r in results if r['rate'] == rate and not r.get('error')]
        n_all = len([r for r in results if r['rate'] == rate])
        firsts = sum(1 for r in runs if r.get('first'))
        rows.append([rate_label(rate), '%d/%d' % (firsts, n_all),
                     sum(r.get('kernel_oom_kills') or 0 for r in runs),
                     ', '.join(sorted(set(r.get('hog_exit', '?') for r in runs))) or 'n/a',
                     fmt_stat([r.get('hog_rate') for r in runs], '%.0f'),
                     fmt_stat([r.get('headroom_mib') for r in runs], '%.1f'),
                     fmt_stat([r.get('bustd_saw_mib') for r in runs], '%.1f'),
                     fmt_stat([r.get('delay_ms') for r in runs], '%.1f'),
                     fmt_stat([r.get('latency_ms') for r in runs], '%.1f'),
                     ', '.join(sorted(set(r.get('latency_how', '?') for r in runs))) or 'n/a',
                     fmt_stat([r.get('kill_to_exited_ms') for r in runs], '%.1f')])
    out.append(md_table(['hog rate', 'bustd.py killed it first', 'kernel OOM kills',
                         'hog died of', 'measured hog MiB/s', 'least memory left (MiB)',
                         'bustd logged mem_available (MiB)', 'delay threshold → SIGTERM (ms)',
                         'deciding reading → signal (ms, -V)', 'victim',
                         '`kill:` → `exited:` lines (ms)'], rows))
    out.append('')
    out.append('Every run:')
    out.append('')
    rows = []
    for idx, r in enumerate(results):
        if r.get('error'):
            rows.append([rate_label(r['rate']), 'error', r['error'], '', '', '', '', '', ''])
            continue
        rows.append([rate_label(r['rate']), 'yes' if r.get('first') else 'no', r.get('killer'),
                     r.get('hog_exit'), r.get('kernel_oom_kills'),
                     fmt(r.get('max_usage', 0) / float(MiB)), fmt(r.get('headroom_mib')),
                     fmt(r.get('delay_ms')) + (' *' if r.get('cross_extrapolated') else ''),
                     r.get('hog_alloc_mib', '')])
    out.append(md_table(['hog rate', 'bustd.py first', 'killed by', 'hog exit',
                         'oom_kill Δ', 'max usage (MiB)', 'least left (MiB)', 'delay (ms)',
                         'hog MiB allocated (last record)'], rows))
    if any(r.get('cross_extrapolated') for r in results):
        out.append('')
        out.append('\\* the hog was stopped between the allocation that crossed 90 % and its '
                   'record: the crossing is taken as the start of that allocation (rate-limited '
                   'hogs: its scheduled time) or extrapolated from the usage slope of the last '
                   '20 records (full speed).')
    # The peers: machine-wide only.
    out.append('')
    out.append(peer_cgroup_demo(parent, opts))
    if errors:
        out += ['', 'Errors: ' + '; '.join(errors)]
    return '\n'.join(out)


def peer_cgroup_demo(parent, opts):
    """earlyoom and nohang have no cgroup mode: show that the kernel acts first there."""
    mi = meminfo()
    safe = mi.get('MemAvailable', 0) - 1048576 > mi.get('MemTotal', 0) * 0.10
    eo_help = run_capture([EARLYOOM, '-h']) if EARLYOOM else ''
    nh_help = run_capture([NOHANG, '-h']) if NOHANG else ''
    peers = []
    if EARLYOOM:
        peers.append(('earlyoom', [EARLYOOM, '-m', '10', '-s', '100', '-r', '0'],
                      READY['earlyoom'],
                      'no: `earlyoom -h` has no cgroup option' if 'cgroup' not in eo_help
                      else '`earlyoom -h` mentions cgroup (check)'))
    else:
        peers.append(('earlyoom', None, None, 'not installed'))
    if NOHANG and os.path.exists(NOHANG_CONF):
        peers.append(('nohang', [NOHANG, '--monitor', '-c', NOHANG_CONF], READY['nohang'],
                      'no: `nohang -h` has no cgroup option; its config uses cgroup names '
                      'only to adjust badness and choose actions' if 'cgroup' not in nh_help
                      else '`nohang -h` mentions cgroup (check)'))
    else:
        peers.append(('nohang', None, None, 'not installed'))
    rows = []
    for name, argv, ready, aware in peers:
        if argv is None:
            rows.append([name, aware, 'not run'])
            continue
        if not safe:
            rows.append([name, aware, 'not run: the machine has less than 10 %% + 1 GiB '
                         'available, so a machine-wide daemon might act'])
            continue
        note('pressure: %s (machine-wide) with the hog at full speed' % name)
        try:
            r = pressure_run(parent, 'peer-%s' % name, 0, (name, argv, ready))
        except (OSError, RuntimeError) as exc:
            r = {'error': str(exc)}
        if r.get('error'):
            rows.append([name, aware, 'error: %s' % r['error']])
        else:
            rows.append([name, aware, '%s; hog died of %s, oom_kill Δ %s, least left %.1f MiB'
                         % (r['killer'], r['hog_exit'], r['kernel_oom_kills'],
                            r['headroom_mib'])])
    return ('The peers watch only the whole machine (%.1f GiB available here), so in a '
            'cgroup the kernel acts first.  Demonstration: the same full-speed hog with the '
            'peer running (same thresholds as in section 1) instead of bustd.py, one run:\n\n'
            % (mi.get('MemAvailable', 0) / 1048576.0) +
            md_table(['peer', 'cgroup-aware', 'who killed the hog'], rows))


# ============================================================================
# Section 6: start-up
# ============================================================================

# ============================================================================
# Section 7: the idle wake-up against a minimal Python loop
# ============================================================================

# The least a Python poller can do per wake-up: one sysinfo(2) through ctypes
# and one sleep.
MINIMAL_LOOP = r"""
import ctypes, os, sys, time
period = float(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
class Sysinfo(ctypes.Structure):
    _fields_ = [('uptime', ctypes.c_long), ('loads', ctypes.c_ulong * 3),
                ('totalram', ctypes.c_ulong), ('freeram', ctypes.c_ulong),
                ('rest', ctypes.c_char * 256)]
info = Sysinfo()
ref = ctypes.byref(info)
sysinfo = libc.sysinfo
os.write(2, b'ready: watching\n')
while True:
    sysinfo(ref)
    free_kib = info.freeram // 1024
    time.sleep(period)
"""

# bustd.py's own start-up and loop, with the schedule replaced by a constant
# so that it wakes as often as the minimal loop.
BUSTD_AT_RATE = r"""
import sys
sys.path.insert(0, sys.argv[2])
import bustd
period = float(sys.argv[1])
bustd.sleep_time_s = lambda *args, **kw: period
sys.exit(bustd.main(['-n']))
"""


def wakeup_cost(argv, ready, settle_s, window_s):
    """Run argv; return (µs of CPU per voluntary wake-up, wake-ups/s) over window_s."""
    c = Child('wakeup', argv, ready).start()
    try:
        if not c.wait_ready(30.0):
            raise RuntimeError('not ready: %s' % c.tail())
        time.sleep(settle_s)
        first = cpu_counters(c.pid)
        time.sleep(window_s)
        last = cpu_counters(c.pid)
    finally:
        c.stop()
    if first is None or last is None:
        raise RuntimeError('exited: %s' % c.tail())
    wakeups = max(1, last[1] - first[1])
    return (last[0] - first[0]) / 1000.0 / wakeups, wakeups / window_s


def section_wakeup(opts):
    out = ['## ' + SECTION_TITLES['wakeup'], '']
    periods = [0.021, 0.1]
    rows = []
    raw = {}
    for period in periods:
        for rep in range(opts.wakeup_reps):
            order = ['minimal', 'bustd'] if rep % 2 == 0 else ['bustd', 'minimal']
            for who in order:
                note('wakeup: %d ms, %s, run %d/%d' % (period * 1000, who, rep + 1,
                                                      opts.wakeup_reps))
                if who == 'minimal':
                    argv = [PY, '-I', '-S', '-c', MINIMAL_LOOP, str(period)]
                else:
                    argv = [PY, '-I', '-S', '-c', BUSTD_AT_RATE, str(period), ROOT]
                us, rate = wakeup_cost(argv, 'ready: watching', 2.0, opts.wakeup_s)
                raw.setdefault((period, who), []).append((us, rate))
    eo = []
    if EARLYOOM:
        for rep in range(opts.wakeup_reps):
            note('wakeup: earlyoom, run %d/%d' % (rep + 1, opts.wakeup_reps))
            eo.append(wakeup_cost([EARLYOOM, '-m', '10', '-s', '100', '-r', '0'],
                                  READY['earlyoom'], 2.0, max(opts.wakeup_s, 10.0)))
    for period in periods:
        mini = raw[(period, 'minimal')]
        ours = raw[(period, 'bustd')]
        mini_us = statistics.median(u for u, _ in mini)
        ours_us = statistics.median(u for u, _ in ours)
        rows.append(['%d ms' % (period * 1000), fmt_stat([u for u, _ in mini], '%.0f'),
                     fmt_stat([u for u, _ in ours], '%.0f'),
                     '%.2f×' % (ours_us / mini_us),
                     '%.1f / %.1f' % (statistics.median(r for _, r in mini),
                                      statistics.median(r for _, r in ours))])
    out.append('Each loop runs alone for %g s after 2 s of settling, %d runs each, '
               'interleaved; CPU from /proc/PID/task/*/schedstat divided by the voluntary '
               'context switches (one per sleep).  Minimal loop: `python3 -I -S`, sysinfo(2) '
               'through ctypes and `time.sleep(period)`, nothing else.  bustd.py: `bustd.main'
               '([\'-n\'])` in `python3 -I -S` with `sleep_time_s` replaced by the constant '
               'period (the real loop: far from every level, one rt_sigtimedwait(2) on its '
               'signals, the cheap reading, the fill-rate model; a full step every %g s).  '
               'Median (min–max) '
               'µs of CPU per wake-up.' % (opts.wakeup_s, opts.wakeup_reps,
                                           import_bustd().IDLE_STEP_EVERY_S))
    out.append('')
    out.append(md_table(['period', 'minimal Python loop (µs)', 'bustd.py idle loop (µs)',
                         'bustd.py / minimal', 'wake-ups/s (minimal / bustd.py)'], rows))
    out.append('')
    if eo:
        out.append('earlyoom (`-m 10 -s 100 -r 0`, its own schedule: %.1f wake-ups/s here): '
                   '%s µs of CPU per wake-up (it reads /proc/meminfo each time).' % (
                       statistics.median(r for _, r in eo), fmt_stat([u for u, _ in eo],
                                                                     '%.0f')))
    else:
        out.append('earlyoom: not installed.')
    return '\n'.join(out)


def section_startup(opts):
    specs = [(n, a, r, w) for n, a, r, w in daemon_specs()]
    bare = ('bare python3 -I -S (first line)',
            [PY, '-I', '-S', '-c', 'import os, time; os.write(2, b"up\\n"); time.sleep(1e6)'],
            'up', None)
    specs.append(bare)
    times = dict((s[0], []) for s in specs)
    problems = {}
    for rep in range(opts.startup_runs):
        order = specs[rep % len(specs):] + specs[:rep % len(specs)]
        note('startup: run %d/%d' % (rep + 1, opts.startup_runs))
        for name, argv, ready, why in order:
            if argv is None:
                continue
            c = Child(name, argv, ready).start()
            try:
                if c.wait_ready(30):
                    times[name].append((c.t_ready - c.t_exec) * 1000.0)
                else:
                    problems[name] = 'no "%s" line in 30 s: %s' % (ready, c.tail())
            finally:
                c.stop()
            time.sleep(0.2)
    out = ['## ' + SECTION_TITLES['startup'], '']
    out.append('Time from just before exec (Popen) to the arrival of the first line '
               'containing the ready text on the bench\'s reader thread; one daemon at a '
               'time, the order rotated between runs, %d runs, milliseconds.'
               % opts.startup_runs)
    out.append('')
    bm = median(times.get('bustd.py', []))
    eo = median(times.get('earlyoom', []))
    nh = median(times.get('nohang', []))
    rows = []
    for name, argv, ready, why in specs:
        if argv is None:
            rows.append([name, '', why, '', ''])
            continue
        rows.append([name, '"%s"' % ready, fmt_stat(times[name], '%.1f'),
                     ratio(median(times[name]), eo) if eo else 'n/a',
                     problems.get(name, '')])
    out.append(md_table(['process', 'ready line', 'exec → ready (ms)', 'vs earlyoom', 'note'],
                        rows))
    if bm and nh:
        out += ['', 'bustd.py / nohang: %s.' % ratio(bm, nh)]
    return '\n'.join(out)


# ============================================================================
# main
# ============================================================================

def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog='bench/run.py',
        description='Benchmark bustd.py against earlyoom and nohang; Markdown on stdout.')
    ap.add_argument('--quick', action='store_true',
                    help='fewer and shorter repetitions (a smoke run, well under 2 minutes)')
    ap.add_argument('--reps', type=int, metavar='N',
                    help='repetitions for every section (default 3 for the idle sessions, '
                         '5 elsewhere; --quick: 1-2)')
    ap.add_argument('--skip-pressure', action='store_true', help='skip section 5')
    ap.add_argument('--only', metavar='SECTION,...',
                    help='run only these sections: %s (or 1-7)' % ','.join(SECTIONS))
    opts = ap.parse_args(argv)
    if opts.reps is not None and opts.reps < 1:
        ap.error('--reps must be at least 1')
    wanted = list(SECTIONS)
    if opts.only:
        wanted = []
        for item in opts.only.split(','):
            item = item.strip().lower()
            if item.isdigit() and 1 <= int(item) <= len(SECTIONS):
                item = SECTIONS[int(item) - 1]
            if item not in SECTIONS:
                ap.error('--only: unknown section %r; choose from %s or 1-7'
                         % (item, ','.join(SECTIONS)))
            if item not in wanted:
                wanted.append(item)
    if opts.skip_pressure and 'pressure' in wanted:
        wanted.remove('pressure')
    opts.sections = [s for s in SECTIONS if s in wanted]
    q = opts.quick
    opts.idle_s = 3.0 if q else 10.0
    opts.cpu_s = 10.0 if q else 60.0
    opts.reps_idle = opts.reps or (1 if q else 3)
    opts.poll_iterations = 2000 if q else 20000
    opts.poll_repeats = opts.reps or (3 if q else 15)
    opts.scan_repeats = max(3, opts.reps or (3 if q else 10))
    opts.list_repeats = opts.reps or (2 if q else 5)
    opts.eo_scan_s = 2.0 if q else 4.0
    opts.pressure_runs = opts.reps or (1 if q else 5)
    opts.startup_runs = opts.reps or (2 if q else 5)
    opts.wakeup_reps = opts.reps or (2 if q else 5)
    opts.wakeup_s = 3.0 if q else 10.0
    return opts


def on_signal(signum, frame):
    if Critical.depth:
        Critical.pending = signum
        return
    raise KeyboardInterrupt('signal %d' % signum)


def main(argv):
    opts = parse_args(argv)
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, on_signal)
    atexit.register(CLEAN.run)
    if not os.path.isfile(BUSTD):
        sys.stderr.write('bench/run.py: %s not found\n' % BUSTD)
        return 1
    started = time.monotonic()
    note('sections: %s%s' % (', '.join(opts.sections), ' (quick)' if opts.quick else ''))
    report = [header(['bench/run.py'] + argv), '']
    print('\n'.join(report))
    sys.stdout.flush()
    status = 0
    try:
        done_idle = None
        for section in opts.sections:
            try:
                if section in ('memory', 'cpu'):
                    if done_idle is None:
                        done_idle = idle_sessions(opts, 'memory' in opts.sections,
                                                  'cpu' in opts.sections)
                    specs, bares, mem, cpu, problems = done_idle
                    text = (report_memory(specs, bares, mem, problems, opts)
                            if section == 'memory'
                            else report_cpu(specs, bares, cpu, problems, opts))
                elif section == 'poll':
                    text = section_poll(opts)
                elif section == 'scan':
                    text = section_scan(opts)
                elif section == 'pressure':
                    text = section_pressure(opts)
                elif section == 'wakeup':
                    text = section_wakeup(opts)
                else:
                    text = section_startup(opts)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                traceback.print_exc()
                text = '## %s\n\nSection failed: %s: %s' % (
                    SECTION_TITLES[section], type(exc).__name__, exc)
                status = 1
            finally:
                CLEAN.run()   # nothing of a section outlives it
            print(text)
            print()
            sys.stdout.flush()
        print('Total bench time: %.0f s; load average at the end: %s.' % (
            time.monotonic() - started, (read_text('/proc/loadavg', '?') or '?').strip()))
    except KeyboardInterrupt:
        note('interrupted: cleaning up')
        status = 130
    finally:
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        CLEAN.run()
    note('done in %.0f s' % (time.monotonic() - started))
    return status


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
