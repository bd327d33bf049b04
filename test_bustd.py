#!/usr/bin/env python3
"""Tests for bustd.py: python3 -m unittest -v

Fake /proc trees are built in temporary directories.  Tests that kill only
ever signal processes they started themselves (oom_score_adj 1000, their own
session or cgroup); tests that need real memory pressure do it inside a
memory cgroup of their own, with a small limit.
"""
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BUSTD = os.path.join(HERE, 'bustd.py')
sys.path.insert(0, HERE)
import bustd  # noqa: E402

GIB = 1024 * 1024   # KiB
MIB = 1024


# ----------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------

class ListSink(object):
    """A log sink that keeps (priority, message) pairs."""

    def __init__(self):
        self.lines = []

    def write(self, priority, message):
        self.lines.append((priority, message))

    def reopen(self):
        self.lines.append((6, 'reopened'))

    def describe(self):
        return 'a list'

    def text(self):
        return '\n'.join(m for _, m in self.lines)


def make_log(verbose=False):
    sink = ListSink()
    return bustd.Log(sink, verbose), sink


def stat_line(pid, name, state='S', ppid=100, pgrp=None, session=None, flags=0,
              starttime=5000, rss_pages=256):
    """Return /proc/PID/stat bytes in the kernel's layout (52 fields)."""
    fields = [state, ppid, pgrp if pgrp is not None else pid,
              session if session is not None else pid, 0, -1, flags,
              0, 0, 0, 0, 1, 1, 0, 0, 20, 0, 1, 0, starttime, 10 << 20, rss_pages]
    fields += [0] * (52 - 2 - len(fields))
    return ('%d (%s) ' % (pid, name) + ' '.join(str(f) for f in fields) + '\n').encode()


class FakeProc(object):
    """A fake /proc tree: meminfo, PSI, zoneinfo and processes."""

    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, 'pressure'), exist_ok=True)
        self.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)
        self.psi(0.0)

    def write(self, rel, data, mode='wb'):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Write then rename: a reader never sees a half-written file.
        tmp = path + '.tmp'
        with open(tmp, mode) as f:
            f.write(data)
        os.rename(tmp, path)

    def meminfo(self, total_kib, avail_kib, swap_total_kib=0, swap_free_kib=0,
                with_available=True, free_kib=None, cached_kib=0, buffers_kib=0, shmem_kib=0):
        free = avail_kib if free_kib is None else free_kib
        lines = ['MemTotal:       %d kB' % total_kib, 'MemFree:        %d kB' % free]
        if with_available:
            lines.append('MemAvailable:   %d kB' % avail_kib)
        lines += ['Buffers:        %d kB' % buffers_kib, 'Cached:         %d kB' % cached_kib,
                  'SwapCached:            0 kB', 'Shmem:          %d kB' % shmem_kib,
                  'SwapTotal:      %d kB' % swap_total_kib,
                  'SwapFree:       %d kB' % swap_free_kib, 'HugePages_Total:       0']
        self.write('meminfo', ('\n'.join(lines) + '\n').encode())

    def psi(self, some_avg10, full_avg10=0.0):
        self.write('pressure/memory', (
            'some avg10=%.2f avg60=0.00 avg300=0.00 total=1\n'
            'full avg10=%.2f avg60=0.00 avg300=0.00 total=1\n' % (some_avg10, full_avg10)
        ).encode())

    def add(self, pid, name='worker', oom_score=100, adj=0, uid=None, cmdline=None, **stat):
        d = os.path.join(self.root, str(pid))
        os.makedirs(d, exist_ok=True)
        self.write('%d/stat' % pid, stat_line(pid, name, **stat))
        self.write('%d/oom_score' % pid, ('%d\n' % oom_score).encode())
        self.write('%d/oom_score_adj' % pid, ('%d\n' % adj).encode())
        self.write('%d/cmdline' % pid, (cmdline if cmdline is not None
                                        else name.encode() + b'\0'))
        if uid is not None:
            os.chown(d, uid, uid)

    def remove(self, pid):
        shutil.rmtree(os.path.join(self.root, str(pid)))

    def link(self, pid):
        """Make pid's entry the real /proc/PID (a process the test started)."""
        os.symlink('/proc/%d' % pid, os.path.join(self.root, str(pid)))


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='bustd-test-')
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.proc = FakeProc(os.path.join(self.tmp, 'proc'))


def settings(proc, **overrides):
    overrides.setdefault('daemon', False)
    return bustd.Settings(proc=proc.root if isinstance(proc, FakeProc) else proc, **overrides)


def no_kernel_calls():
    calls = bustd.KernelCalls()
    return calls


VICTIM_CODE = textwrap.dedent('''
    import os, signal, sys, time
    with open('/proc/self/oom_score_adj', 'w') as f:
        f.write('1000')
    if 'ignore-term' in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.write('ready\\n')
    sys.stdout.flush()
    while True:
        time.sleep(1)
''')


def start_victim(*args, **popen):
    """Start a test-owned sleeper with oom_score_adj 1000; return its Popen once ready."""
    child = subprocess.Popen([sys.executable, '-c', VICTIM_CODE] + list(args),
                             stdout=subprocess.PIPE, **popen)
    assert child.stdout.readline() == b'ready\n'
    return child


def stop(child):
    """Cleanup: SIGKILL a test-owned child if it still runs, and reap it."""
    if child.poll() is None:
        child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def reap(child, timeout=10):
    """Kill (if needed) and wait for a test-owned child; return its returncode."""
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


# ----------------------------------------------------------------------------
# Pure parsers
# ----------------------------------------------------------------------------

class ParseStatTest(unittest.TestCase):
    def test_hostile_names(self):
        cases = [
            ('bash', 'bash'),
            ('a b', 'a b'),
            ('x) R 1 (y', 'x) R 1 (y'),
            ('))((', '))(('),
            ('new\nline', 'new\nline'),
            ('', ''),
        ]
        for name, expected in cases:
            with self.subTest(name=name):
                st = bustd.parse_stat(stat_line(42, name, state='R', ppid=7, pgrp=9,
                                                session=11, flags=bustd.PF_EXITING,
                                                starttime=123456, rss_pages=99))
                self.assertEqual(st.name, expected)
                self.assertEqual((st.pid, st.state, st.ppid, st.pgrp, st.session),
                                 (42, 'R', 7, 9, 11))
                self.assertEqual((st.flags, st.starttime, st.rss_pages),
                                 (bustd.PF_EXITING, 123456, 99))

    def test_malformed(self):
        for data in (b'', b'garbage', b'12 (x', b'12 (x) S 1 2', b'x (y) S ' + b'1 ' * 30):
            with self.subTest(data=data):
                self.assertIsNone(bustd.parse_stat(data))

    def test_real_stat_of_this_process(self):
        with open('/proc/self/stat', 'rb') as f:
            st = bustd.parse_stat(f.read())
        self.assertEqual(st.pid, os.getpid())
        self.assertEqual(st.ppid, os.getppid())
        self.assertEqual(st.pgrp, os.getpgrp())


class ParseMeminfoTest(unittest.TestCase):
    def test_fields_in_kib(self):
        fields = bustd.parse_meminfo(b'MemTotal:  1000 kB\nMemAvailable: 250 kB\n'
                                     b'HugePages_Total:  3\nbad line\n\n')
        self.assertEqual(fields, {'MemTotal': 1000, 'MemAvailable': 250, 'HugePages_Total': 3})

    def test_memory_stat_format(self):
        fields = bustd.parse_meminfo(b'cache 4096\nactive_file 8192\ntotal_rss 1\n')
        self.assertEqual(fields['active_file'], 8192)
        self.assertEqual(fields['total_rss'], 1)

    def test_available_estimate_on_old_kernels(self):
        cases = [
            ({'MemAvailable': 5, 'MemFree': 100}, 5),
            ({'MemFree': 100, 'Cached': 50, 'Buffers': 10, 'Shmem': 20}, 140),
            ({'MemFree': 10, 'Shmem': 50}, 0),
        ]
        for fields, expected in cases:
            with self.subTest(fields=fields):
                self.assertEqual(bustd.available_kib(fields), expected)


class ParsePsiTest(unittest.TestCase):
    def test_cases(self):
        cases = [
            (b'some avg10=1.50 avg60=0.00 avg300=0.00 total=5\n'
             b'full avg10=0.25 avg60=0.00 avg300=0.00 total=2\n', (1.5, 0.25)),
            (b'some avg10=99.99 avg60=1 avg300=1 total=1\n', (99.99, None)),
            (b'', (None, None)),
            (b'some avg10=abc\n', (None, None)),
            (b'garbage\x00\xff\n', (None, None)),
        ]
        for data, expected in cases:
            with self.subTest(data=data):
                self.assertEqual(bustd.parse_psi(data), expected)


class ParseSizesTest(unittest.TestCase):
    def test_sizes_kib(self):
        cases = [('1024', 1024), ('512M', 512 * 1024), ('1G', GIB), ('1.5g', GIB * 3 // 2),
                 ('512MiB', 512 * 1024), ('64k', 64), ('2T', 2 * 1024 ** 3), (' 10M ', 10240),
                 ('100MB', 100 * 1024)]
        for text, expected in cases:
            with self.subTest(text=text):
                self.assertEqual(bustd.parse_size_kib(text), expected)

    def test_bad_sizes(self):
        for text in ('', 'M', 'abc', '-5M', '1X', '1.2.3G', 'nan'):
            with self.subTest(text=text):
                with self.assertRaises(ValueError):
                    bustd.parse_size_kib(text)

    def test_percent_pairs(self):
        cases = [('10', (10.0, 5.0)), ('10,5', (10.0, 5.0)), ('20,18', (20.0, 18.0)),
                 ('100', (100.0, 50.0)), ('0', (0.0, 0.0)), ('7%', (7.0, 3.5))]
        for text, expected in cases:
            with self.subTest(text=text):
                self.assertEqual(bustd.parse_pair(text, bustd.parse_percent), expected)

    def test_bad_percent_pairs(self):
        for text in ('120', '-1', 'abc', '5,10', '10,', ',5', '10,5,1'):
            with self.subTest(text=text):
                with self.assertRaises(ValueError):
                    bustd.parse_pair(text, bustd.parse_percent)

    def test_size_pairs(self):
        self.assertEqual(bustd.parse_pair('1G', bustd.parse_size_kib), (GIB, GIB / 2))
        self.assertEqual(bustd.parse_pair('1G,256M', bustd.parse_size_kib), (GIB, 256 * MIB))


class ParseMiscTest(unittest.TestCase):
    def test_zoneinfo_reserve(self):
        zoneinfo = textwrap.dedent('''\
            Node 0, zone      DMA
              pages free     3840
                    min      13
                    low      16
                    high     19
                    managed  3840
                    protection: (0, 2000, 3000, 3000)
              pagesets
                cpu: 0
                          count: 0
                          high:  500
            Node 0, zone    DMA32
              pages free     100
                    high     700
                    managed  500000
                    protection: (0, 0, 1000, 1000)
            Node 0, zone   Normal
                    high     100
                    managed  50
                    protection: (0, 0, 0, 0)
            ''').encode()
        # DMA: 19 + 3000; DMA32: 700 + 1000; Normal: min(100, 50 managed) -> 50
        self.assertEqual(bustd.parse_zoneinfo_reserve_kib(zoneinfo, 4),
                         (3019 + 1700 + 50) * 4)
        self.assertEqual(bustd.parse_zoneinfo_reserve_kib(b''), 0)

    def test_zoneinfo_of_this_machine_is_a_lower_bound_gap(self):
        with open('/proc/zoneinfo', 'rb') as f:
            reserve = bustd.parse_zoneinfo_reserve_kib(f.read())
        with open('/proc/meminfo', 'rb') as f:
            fields = bustd.parse_meminfo(f.read())
        self.assertGreater(reserve, 0)
        # MemAvailable >= MemFree - totalreserve (the kernel's formula).
        self.assertGreaterEqual(fields['MemAvailable'] + 64 * MIB, fields['MemFree'] - reserve)

    def test_glob_match(self):
        cases = [
            ('sshd', 'sshd', True), ('sshd', 'sshd2', False), ('systemd*', 'systemd-journal', True),
            ('systemd-*', 'systemd', False), ('*', '', True), ('a*b*c', 'aXXbYYc', True),
            ('a*b*c', 'aXXbYY', False), ('?ash', 'bash', True), ('?ash', 'ash', False),
            ('[bd]ash', 'dash', True), ('[!bd]ash', 'dash', False), ('[a-c]at', 'bat', True),
            ('[a-c]at', 'rat', False), ('*.py', 'x.py', True), ('x', 'X', False),
            ('**', 'abc', True), ('a[', 'a[', True),
        ]
        import fnmatch
        for pattern, text, expected in cases:
            with self.subTest(pattern=pattern, text=text):
                self.assertEqual(bustd.glob_match(pattern, text), expected)
                self.assertEqual(fnmatch.fnmatchcase(text, pattern), expected)

    def test_printable(self):
        self.assertEqual(bustd.printable('a\nb\x1b'), 'a\\x0ab\\x1b')
        self.assertEqual(bustd.printable('x' * 10, 4), 'xxxx...')

    def test_format_kib(self):
        cases = [(0, '0 KiB'), (1023, '1023 KiB'), (1024, '1.0 MiB'), (3 * GIB + GIB // 10, '3.1 GiB')]
        for kib, text in cases:
            self.assertEqual(bustd.format_kib(kib), text)

    def test_cap_eff(self):
        self.assertEqual(bustd.parse_cap_eff('Name:\tx\nCapEff:\t0000000000000020\n'), 1 << 5)
        self.assertEqual(bustd.parse_cap_eff('nothing'), 0)
        self.assertTrue(bustd.has_cap(1 << bustd.CAP_KILL, bustd.CAP_KILL))
        self.assertFalse(bustd.has_cap(1 << bustd.CAP_KILL, bustd.CAP_IPC_LOCK))


# ----------------------------------------------------------------------------
# Policy (when): thresholds, decide, sleep_time
# ----------------------------------------------------------------------------

def reading(total=8 * GIB, avail=6 * GIB, swap_total=0, swap_free=0, psi=None, exact=True):
    r = bustd.Reading()
    r.mem_total_kib, r.mem_available_kib = total, avail
    r.mem_free_kib = avail
    r.swap_total_kib, r.swap_free_kib = swap_total, swap_free
    r.psi_some_avg10 = psi
    r.exact = exact
    return r


class ThresholdsTest(unittest.TestCase):
    def th(self, total=1000 * MIB, swap=0, **kw):
        return bustd.compute_thresholds(bustd.Settings(**kw), total, swap)

    def test_defaults(self):
        th = self.th(swap=2000 * MIB)
        self.assertEqual((th.mem_term_kib, th.mem_kill_kib), (100 * MIB, 50 * MIB))
        self.assertEqual((th.swap_term_kib, th.swap_kill_kib), (200 * MIB, 100 * MIB))
        self.assertEqual(th.psi_mem_max_kib, 150 * MIB)
        self.assertEqual(th.trigger_kib, 150 * MIB)

    def test_percent_and_size_lower_wins(self):
        th = self.th(mem_percent=(10, 5), mem_size_kib=(64 * MIB, 8 * MIB))
        self.assertEqual((th.mem_term_kib, th.mem_kill_kib), (64 * MIB, 8 * MIB))
        th = self.th(mem_percent=(10, 5), mem_size_kib=(900 * MIB, 800 * MIB))
        self.assertEqual((th.mem_term_kib, th.mem_kill_kib), (100 * MIB, 50 * MIB))

    def test_psi_off_and_warn_raise_trigger(self):
        th = self.th(psi_avg10=None)
        self.assertEqual(th.trigger_kib, th.mem_term_kib)
        th = self.th(psi_avg10=None, warn_percent=30)
        self.assertEqual(th.trigger_kib, 300 * MIB)


class DecideTest(unittest.TestCase):
    def test_table(self):
        th = bustd.compute_thresholds(bustd.Settings(), 1000 * MIB, 0)
        th_swap = bustd.compute_thresholds(bustd.Settings(), 1000 * MIB, 1000 * MIB)
        T, K = signal.SIGTERM, signal.SIGKILL
        cases = [
            # name, thresholds, reading, expected
            ('plenty', th, reading(1000 * MIB, 500 * MIB), 0),
            ('just above term', th, reading(1000 * MIB, 100 * MIB + 1), 0),
            ('at term', th, reading(1000 * MIB, 100 * MIB), T),
            ('between', th, reading(1000 * MIB, 60 * MIB), T),
            ('at kill', th, reading(1000 * MIB, 50 * MIB), K),
            ('zero', th, reading(1000 * MIB, 0), K),
            ('swap still free', th_swap, reading(1000 * MIB, 10 * MIB, 1000 * MIB, 500 * MIB), 0),
            ('swap low too', th_swap, reading(1000 * MIB, 90 * MIB, 1000 * MIB, 100 * MIB), T),
            ('swap at kill, mem term', th_swap, reading(1000 * MIB, 90 * MIB, 1000 * MIB, 10 * MIB), T),
            ('both at kill', th_swap, reading(1000 * MIB, 40 * MIB, 1000 * MIB, 40 * MIB), K),
            ('mem kill, swap term', th_swap, reading(1000 * MIB, 40 * MIB, 1000 * MIB, 80 * MIB), T),
            ('mem kill, swap above term', th_swap, reading(1000 * MIB, 40 * MIB, 1000 * MIB, 150 * MIB), 0),
            ('psi high, mem below psi max', th, reading(1000 * MIB, 140 * MIB, psi=30.0), T),
            ('psi at level', th, reading(1000 * MIB, 140 * MIB, psi=25.0), T),
            ('psi high, mem above psi max', th, reading(1000 * MIB, 200 * MIB, psi=90.0), 0),
            ('psi low', th, reading(1000 * MIB, 140 * MIB, psi=24.9), 0),
            ('psi unknown', th, reading(1000 * MIB, 140 * MIB, psi=None), 0),
            ('psi with swap free', th_swap, reading(1000 * MIB, 140 * MIB, 1000 * MIB, 900 * MIB, psi=50.0), T),
        ]
        for name, thresholds, r, expected in cases:
            with self.subTest(name):
                self.assertEqual(bustd.decide(r, thresholds), expected)

    def test_psi_off(self):
        th = bustd.compute_thresholds(bustd.Settings(psi_avg10=None), 1000 * MIB, 0)
        self.assertEqual(bustd.decide(reading(1000 * MIB, 140 * MIB, psi=99.0), th), 0)

    def test_trigger_text(self):
        th = bustd.compute_thresholds(bustd.Settings(), 1000 * MIB, 0)
        text = bustd.describe_trigger(reading(1000 * MIB, 40 * MIB, psi=3.0), th)
        self.assertIn('mem_available=40.0MiB(4.0%)', text)
        self.assertIn('swap=none', text)
        self.assertIn('psi_some_avg10=3.00', text)


class SleepTimeTest(unittest.TestCase):
    FILL = 2.0 * GIB    # KiB/s

    def test_table(self):
        th = bustd.compute_thresholds(bustd.Settings(), 16 * GIB, 0)
        th64 = bustd.compute_thresholds(bustd.Settings(), 64 * GIB, 0)
        th_swap = bustd.compute_thresholds(bustd.Settings(), 16 * GIB, 16 * GIB)
        fill = self.FILL
        cases = [
            ('far away', th, reading(16 * GIB, 5 * GIB), (5 * GIB - th.mem_term_kib) / fill),
            ('very far away: ceiling', th64, reading(64 * GIB, 60 * GIB), bustd.POLL_CEILING_S),
            ('at the threshold: floor', th, reading(16 * GIB, th.mem_term_kib), bustd.POLL_FLOOR_S),
            ('below: floor', th, reading(16 * GIB, 0), bustd.POLL_FLOOR_S),
            ('headroom / fill rate', th, reading(16 * GIB, th.mem_term_kib + 2 * GIB),
             2 * GIB / fill),
            ('swap headroom adds', th_swap,
             reading(16 * GIB, th.mem_term_kib + 1 * GIB, 16 * GIB, th_swap.swap_term_kib + 100 * MIB),
             1 * GIB / fill + 100 * MIB / float(bustd.SWAP_FILL_RATE_KIB_S)),
        ]
        for name, thresholds, r, expected in cases:
            with self.subTest(name):
                self.assertAlmostEqual(bustd.sleep_time_s(r, thresholds, fill), expected, places=6)

    def test_a_faster_model_sleeps_less(self):
        th = bustd.compute_thresholds(bustd.Settings(), 1 * GIB, 0)
        r = reading(1 * GIB, 300 * MIB)
        self.assertAlmostEqual(bustd.sleep_time_s(r, th, 1 * GIB),
                               2 * bustd.sleep_time_s(r, th, 2 * GIB), places=6)

    def poll_until_decided(self, model_kib_s, hog_kib_s, total_kib=1 * GIB,
                           start_kib=900 * MIB, learn=True):
        """Drain memory at hog_kib_s, polling on the schedule; return (avail at the decision, th)."""
        th = bustd.compute_thresholds(bustd.Settings(), total_kib, 0)
        fill = bustd.FillModel()
        fill.base_kib_s = fill.rate_kib_s = model_kib_s
        avail, t, last, slept = float(start_kib), 0.0, None, 0.0
        while True:
            r = reading(total_kib, int(avail))
            if bustd.decide(r, th):
                return avail, th
            if last is not None and learn:
                fill.learn(last - avail, slept, t)
            last = avail
            slept = bustd.sleep_time_s(r, th, fill.rate_kib_s)
            t += slept
            avail -= hog_kib_s * slept

    def test_a_hog_within_the_model_is_seen_above_the_sigterm_level_minus_one_floor(self):
        for model, hog in ((8 * GIB, 8 * GIB), (1 * GIB, 1 * GIB), (1 * GIB, 300 * MIB)):
            with self.subTest(model=model, hog=hog):
                avail, th = self.poll_until_decided(model, hog)
                self.assertGreater(avail, th.mem_term_kib - hog * bustd.POLL_FLOOR_S - 1)

    def test_a_hog_faster_than_the_model_is_learned_from_the_readings(self):
        # The model says 512 MiB/s, the hog fills 700 MiB/s from 3.5 GiB of
        # 4 GiB: the first (ceiling) sleep shows the faster drop, and from
        # then on the schedule keeps pace; unlearned, it would overshoot.
        args = (512 * MIB, 700 * MIB, 4 * GIB, 3584 * MIB)
        avail, th = self.poll_until_decided(*args)
        self.assertGreater(avail, th.mem_term_kib - 700 * MIB * bustd.POLL_FLOOR_S - 1)
        unlearned, th = self.poll_until_decided(*args, learn=False)
        self.assertLess(unlearned, th.mem_term_kib - 100 * MIB)


class FillModelTest(unittest.TestCase):
    def test_base_rate_table(self):
        cal = 500 * MIB
        cases = [
            ('not calibrated: the old universal figure', None, 2, bustd.FILL_CAP_KIB_S),
            ('one CPU: safety x calibrated', cal, 1, bustd.FILL_SAFETY * cal),
            ('two CPUs: the safety factor covers the pair', cal, 2, bustd.FILL_SAFETY * cal),
            ('eight CPUs: x4 pairs', cal, 8, bustd.FILL_SAFETY * cal * 4),
            ('slow calibration: floor', 10 * MIB, 2, bustd.FILL_FLOOR_KIB_S),
            ('fast machine: capped at the old figure', 6 * GIB, 2, bustd.FILL_CAP_KIB_S),
        ]
        for name, calibrated, cpus, expected in cases:
            with self.subTest(name):
                model = bustd.FillModel(calibrated, cpus)
                self.assertAlmostEqual(model.base_kib_s, expected)
                self.assertEqual(model.rate_kib_s, model.base_kib_s)

    def test_learning_raises_the_rate_and_forgets_it(self):
        model = bustd.FillModel(500 * MIB, 2)
        base = model.base_kib_s
        self.assertEqual(model.learn(100 * MIB, 1.0, 5.0), base)      # slower than the model
        self.assertEqual(model.learn(-500 * MIB, 0.1, 5.1), base)     # memory freed
        fast = model.learn(1536 * MIB, 0.25, 6.0)                       # 6 GiB/s seen
        self.assertEqual(fast, bustd.FILL_SAFETY * 6 * GIB)
        self.assertGreater(fast, bustd.FILL_CAP_KIB_S)                 # seen beats the cap
        self.assertEqual(model.learn(0, 1.0, 6.0 + bustd.LEARNED_FORGET_S - 0.1), fast)
        self.assertEqual(model.learn(0, 1.0, 6.0 + bustd.LEARNED_FORGET_S), base)

    def test_calibration_measures_a_rate(self):
        kib_s = bustd.calibrate_fill_kib_s(size_kib=1024, repeats=1)
        self.assertIsNotNone(kib_s)
        self.assertGreater(kib_s, 0)

    def test_calibration_uses_the_clock_it_is_given(self):
        ticks = iter(range(100))
        kib_s = bustd.calibrate_fill_kib_s(size_kib=1024, repeats=2, clock=lambda: next(ticks))
        self.assertEqual(kib_s, 1024.0)    # every fault-in took one tick


# ----------------------------------------------------------------------------
# Kernel readers
# ----------------------------------------------------------------------------

class MachineSensorTest(TempDirTest):
    def test_the_reserve_is_the_kernels_not_doubled(self):
        # The schedule plans with MemFree - reserve: a doubled reserve halved idle sleeps.
        self.proc.write('zoneinfo', b'Node 0, zone   Normal\n        high     700\n'
                                    b'        managed  500000\n        protection: (0, 300)\n')
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        sensor.read_reserve()
        self.assertEqual(sensor.reserve_kib, 1000 * os.sysconf('SC_PAGE_SIZE') // 1024)

    def test_exact_reading(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=3 * GIB, swap_total_kib=GIB,
                          swap_free_kib=512 * MIB)
        sensor = bustd.MachineSensor(self.proc.root)
        self.assertEqual(sensor.check(), [])
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib, r.swap_total_kib, r.swap_free_kib),
                         (8 * GIB, 3 * GIB, GIB, 512 * MIB))
        self.assertTrue(r.exact)
        self.assertEqual(r.psi_some_avg10, 0.0)

    def test_old_kernel_without_memavailable(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=0, with_available=False, free_kib=GIB,
                          cached_kib=GIB, buffers_kib=MIB, shmem_kib=2 * MIB)
        sensor = bustd.MachineSensor(self.proc.root)
        warnings = sensor.check()
        self.assertEqual(len(warnings), 1)
        self.assertIn('MemAvailable', warnings[0])
        self.assertEqual(sensor.read_exact(bustd.Reading()).mem_available_kib, 2 * GIB - MIB)

    def test_no_psi_is_one_warning_and_no_reading(self):
        os.unlink(os.path.join(self.proc.root, 'pressure/memory'))
        sensor = bustd.MachineSensor(self.proc.root)
        warnings = sensor.check()
        self.assertEqual(len(warnings), 1)
        self.assertIn('PSI', warnings[0])
        self.assertIsNone(sensor.read_exact(bustd.Reading()).psi_some_avg10)

    def test_odd_psi_file_does_not_crash(self):
        self.proc.write('pressure/memory', b'\xff\xfe nonsense')
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        self.assertIsNone(sensor.read_exact(bustd.Reading()).psi_some_avg10)

    def test_missing_meminfo_is_an_environment_problem(self):
        os.unlink(os.path.join(self.proc.root, 'meminfo'))
        with self.assertRaises(bustd.EnvironmentProblem) as cm:
            bustd.MachineSensor(self.proc.root).check()
        self.assertIn('meminfo', str(cm.exception))

    def test_psi_read_only_where_the_rule_can_apply(self):
        self.proc.psi(40.0)
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), 8 * GIB, 0)
        self.proc.meminfo(8 * GIB, 6 * GIB)
        self.assertIsNone(sensor.read(bustd.Reading(), th).psi_some_avg10)
        self.proc.meminfo(8 * GIB, GIB)
        self.assertEqual(sensor.read(bustd.Reading(), th).psi_some_avg10, 40.0)

    def test_cheap_path_reads_meminfo_only_near_a_threshold(self):
        """With sysinfo, /proc/meminfo is read only when MemFree - reserve is near a level."""
        calls = bustd.KernelCalls()
        free = {'kib': 6 * GIB}

        def fake_sysinfo(r):
            r.mem_total_kib, r.mem_free_kib = 8 * GIB, free['kib']
            r.swap_total_kib = r.swap_free_kib = 0
        calls.sysinfo = fake_sysinfo
        sensor = bustd.MachineSensor(self.proc.root, calls)
        sensor.sysinfo = fake_sysinfo      # normally only for the real /proc
        sensor.reserve_kib = 100 * MIB
        sensor.uses_sysinfo = True
        th = bustd.compute_thresholds(bustd.Settings(), 8 * GIB, 0)
        self.proc.meminfo(8 * GIB, 300 * MIB)   # what an exact read would say
        r = sensor.read(bustd.Reading(), th)
        self.assertFalse(r.exact)
        self.assertEqual(r.mem_available_kib, 6 * GIB - 100 * MIB)
        free['kib'] = th.trigger_kib + 100 * MIB    # lower bound == trigger: read exactly
        r = sensor.read(bustd.Reading(), th)
        self.assertTrue(r.exact)
        self.assertEqual(r.mem_available_kib, 300 * MIB)

    def test_real_sysinfo_matches_meminfo(self):
        calls = bustd.load_kernel_calls()
        if calls.sysinfo is None:
            self.skipTest('no ctypes sysinfo here: %s' % calls.missing)
        r = bustd.Reading()
        calls.sysinfo(r)
        with open('/proc/meminfo', 'rb') as f:
            fields = bustd.parse_meminfo(f.read())
        self.assertEqual(r.mem_total_kib, fields['MemTotal'])
        self.assertEqual(r.swap_total_kib, fields['SwapTotal'])
        self.assertAlmostEqual(r.mem_free_kib, fields['MemFree'], delta=256 * MIB)


# ----------------------------------------------------------------------------
# Victim selection
# ----------------------------------------------------------------------------

class SelectionTest(TempDirTest):
    def scan(self, **kw):
        s = settings(self.proc, **kw)
        policy = bustd.Policy(s, kw.pop('only_uid', None) if 'only_uid' in kw else None)
        return bustd.scan_processes(s.proc, policy)

    def victim(self, **kw):
        victim, _ = bustd.pick_victim(self.scan(**kw), kw.get('sort_by_rss', False))
        return victim and victim.pid

    def test_highest_oom_score_wins(self):
        self.proc.add(10, oom_score=100)
        self.proc.add(11, oom_score=900)
        self.proc.add(12, oom_score=500)
        self.assertEqual(self.victim(), 11)

    def test_lazy_search_reads_whole_records_only_for_contenders(self):
        for pid in range(10, 60):
            self.proc.add(pid, oom_score=pid)
        self.proc.add(99, name='sshd', oom_score=999)
        self.proc.add(98, oom_score=998)
        s = settings(self.proc)
        from unittest import mock
        with mock.patch.object(bustd, 'read_process', wraps=bustd.read_process) as read:
            victim, skipped = bustd.find_victim(s.proc, bustd.Policy(s))
        self.assertEqual((victim.pid, [p.pid for p in skipped]), (98, [99]))
        self.assertEqual(sorted(c[0][1] for c in read.call_args_list), [98, 99])

    def test_full_ties_go_to_the_younger_process_in_both_searches(self):
        self.proc.add(300, oom_score=700, rss_pages=10, starttime=1000)
        self.proc.add(200, oom_score=700, rss_pages=10, starttime=2000)
        s = settings(self.proc)
        policy = bustd.Policy(s)
        self.assertEqual(bustd.find_victim(s.proc, policy)[0].pid, 200)
        self.assertEqual(bustd.pick_victim(bustd.scan_processes(s.proc, policy))[0].pid, 200)

    def test_ties_go_to_the_larger_rss(self):
        self.proc.add(10, oom_score=700, rss_pages=10)
        self.proc.add(11, oom_score=700, rss_pages=5000)
        self.proc.add(12, oom_score=700, rss_pages=20)
        self.assertEqual(self.victim(), 11)

    def test_never_killed(self):
        cases = [
            ('init', dict(pid=1, oom_score=2000)),
            ('kthreadd', dict(pid=2, ppid=0, oom_score=2000)),
            ('kernel thread by parent', dict(pid=30, ppid=2, oom_score=2000)),
            ('kernel thread by flag', dict(pid=31, ppid=1, flags=bustd.PF_KTHREAD, oom_score=2000)),
            ('zombie', dict(pid=32, state='Z', oom_score=2000)),
            ('dead', dict(pid=33, state='X', oom_score=2000)),
            ('exiting', dict(pid=34, flags=bustd.PF_EXITING, oom_score=2000)),
            ('oom_score_adj -1000', dict(pid=35, adj=-1000, oom_score=2000)),
            ('bustd itself', dict(pid=os.getpid(), oom_score=2000)),
        ]
        for name, spec in cases:
            with self.subTest(name):
                self.proc.add(10, oom_score=5)
                pid = spec.pop('pid')
                self.proc.add(pid, **spec)
                self.assertEqual(self.victim(), 10)
                self.proc.remove(pid)

    def test_kernel_threads_are_not_even_listed(self):
        self.proc.add(30, ppid=2, name='kworker/0:1')
        self.proc.add(10)
        self.assertEqual([p.pid for p in self.scan()], [10])

    def test_vanishing_and_unreadable_entries_are_skipped(self):
        self.proc.add(10, oom_score=100)
        self.proc.add(11, oom_score=900)
        os.unlink(os.path.join(self.proc.root, '11/oom_score'))   # vanished mid-scan
        os.makedirs(os.path.join(self.proc.root, '12'))            # hidepid: nothing readable
        self.proc.add(13, oom_score=950)
        self.proc.write('13/stat', b'13 (broken')                  # torn read
        os.makedirs(os.path.join(self.proc.root, 'self'))
        self.assertEqual(self.victim(), 10)

    def test_hostile_names_survive_scan_and_logging(self):
        self.proc.add(10, name='evil) Z 1 (x\n', oom_score=900, rss_pages=1)
        victim = self.victim()
        self.assertEqual(victim, 10)
        p = self.scan()[0]
        self.assertEqual(p.name, 'evil) Z 1 (x\n')
        self.assertEqual(p.state, 'S')
        line = bustd.kill_line(signal.SIGTERM, p, 'x')
        self.assertNotIn('\n', line)

    def test_nothing_killable(self):
        self.proc.add(1, oom_score=10)
        self.proc.add(20, name='sshd', oom_score=900)
        self.assertIsNone(self.victim())

    def test_empty_or_unreadable_proc(self):
        s = settings(os.path.join(self.tmp, 'nope'))
        self.assertEqual(bustd.scan_processes(s.proc, bustd.Policy(s)), [])


# ----------------------------------------------------------------------------
# Who may be killed: lists, preferences, matching (issue 4)
# ----------------------------------------------------------------------------

class PolicyTest(TempDirTest):
    def setUp(self):
        TempDirTest.setUp(self)
        add = self.proc.add
        add(100, name='firefox', oom_score=600, rss_pages=9000, uid=1000,
            cmdline=b'/usr/lib/firefox/firefox\0-contentproc\0')
        add(101, name='sshd', oom_score=900, rss_pages=100, cmdline=b'sshd: alice\0')
        add(102, name='java', oom_score=700, rss_pages=5000, uid=1000,
            cmdline=b'java\0-jar\0/srv/build-server.jar\0')
        add(103, name='java', oom_score=650, rss_pages=20000, uid=1000,
            cmdline=b'java\0-jar\0/srv/ide.jar\0')
        add(104, name='Xorg', oom_score=800, rss_pages=3000, uid=0)
        add(105, name='cc1plus', oom_score=500, rss_pages=4000, uid=1000)
        add(106, name='dpkg', oom_score=1000, rss_pages=300)

    def pick(self, argv=(), **kw):
        s = bustd.parse_settings(list(argv) + ['--proc', self.proc.root])
        for k, v in kw.items():
            setattr(s, k, v)
        policy = bustd.Policy(s)
        processes = bustd.scan_processes(s.proc, policy)
        victim, skipped = bustd.pick_victim(processes, s.sort_by_rss)
        answer = victim.pid if victim else None, [p.pid for p in skipped]
        # The kill path's lazy search must give the same answer as the full scan.
        fast_victim, fast_skipped = bustd.find_victim(s.proc, policy)
        self.assertEqual((fast_victim.pid if fast_victim else None,
                          [p.pid for p in fast_skipped]), answer)
        return answer

    def test_table(self):
        cases = [
            # argv, expected victim, expected skipped protected (outranking it)
            ((), 104, [106, 101]),                       # dpkg and sshd are default-protected
            (('--no-default-unkillables',), 106, []),
            (('-u', 'Xorg'), 102, [106, 101, 104]),
            (('-u', 'Xorg|java'), 100, [106, 101, 104, 102, 103]),
            (('-u', 'Xorg', '-u', 'java'), 100, [106, 101, 104, 102, 103]),
            (('-u', 'X*'), 102, [106, 101, 104]),
            (('--ignore', '^(Xorg|java)$'), 100, [106, 101, 104, 102, 103]),
            (('--ignore', 'org'), 102, [106, 101, 104]),                # regex search
            (('-u', 'org'), 104, [106, 101]),                           # glob is whole-name
            (('--ignore-root-user',), 102, [106, 101, 104]),
            (('--prefer', '^cc1'), 105, [106, 101]),                    # 500 + 300 = 800, RSS beats Xorg
            (('--avoid', '^Xorg$'), 102, [106, 101]),                   # 800 - 300 = 500
            (('--prefer', 'sshd'), 104, [101, 106]),                    # protected beats preferred
            (('--prefer', 'dpkg', '--no-default-unkillables'), 106, []),
            (('--sort-by-rss',), 103, []),
            (('--sort-by-rss', '-u', 'java'), 100, [103]),
            (('--sort-by-rss', '--prefer', 'Xorg'), 104, []),           # preference first
            (('--match', 'cmdline', '-u', '*ide.jar*'), 104, [106, 101]),
            (('--match', 'cmdline', '-u', '*ide.jar*', '--avoid', 'Xorg'), 102, [106, 101]),
            (('--match', 'cmdline', '--prefer', 'ide\\.jar'), 103, [106]),   # 650 + 300
            (('--match', 'cmdline', '--ignore', 'jar'), 104, [106, 101]),
            (('--match', 'name', '--ignore', 'jar'), 104, [106, 101]),  # names have no "jar"
        ]
        for argv, victim, skipped in cases:
            with self.subTest(argv=argv):
                self.assertEqual(self.pick(argv), (victim, skipped))

    def test_cmdline_matching_sees_nul_separated_words_as_spaces(self):
        s = bustd.parse_settings(['--proc', self.proc.root, '--match', 'cmdline',
                                  '-u', 'java -jar /srv/build-server.jar'])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s))
        protected = dict((p.pid, p.protected) for p in procs)
        self.assertEqual(protected[102], '-u java -jar /srv/build-server.jar')
        self.assertIsNone(protected[103])

    def test_default_list_matches_names_even_in_cmdline_mode(self):
        self.assertEqual(self.pick(['--match', 'cmdline'])[0], 104)

    def test_not_root_kills_only_own_processes(self):
        s = bustd.parse_settings(['--proc', self.proc.root])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s, only_uid=1000))
        victim, _ = bustd.pick_victim(procs)
        self.assertEqual(victim.pid, 102)

    def test_list_table(self):
        s = bustd.parse_settings(['--proc', self.proc.root, '--prefer', 'cc1', '--avoid', 'Xorg'])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s))
        table = bustd.format_table(procs, False, lambda uid: {0: 'root', 1000: 'alice'}[uid])
        lines = table.split('\n')
        self.assertEqual(lines[0].split(), ['PID', 'USER', 'NAME', 'OOM_SCORE', 'ADJ', 'RSS', 'MARK'])
        self.assertIn('protected: default: dpkg', lines[1])
        self.assertEqual(lines[1].split()[0], '106')
        self.assertTrue(any('105' in l and 'preferred' in l and '<- victim' in l for l in lines))
        self.assertTrue(any('104' in l and 'avoided' in l for l in lines))
        self.assertTrue(any('alice' in l for l in lines))

    def test_describe_victim_names_the_skipped(self):
        s = bustd.parse_settings(['--proc', self.proc.root])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s))
        victim, skipped = bustd.pick_victim(procs)
        text = bustd.describe_victim(victim, skipped, False)
        self.assertIn('highest oom_score 800', text)
        self.assertIn('106 dpkg (default: dpkg)', text)
        self.assertIn('101 sshd (default: sshd)', text)


class GroupRefusalTest(unittest.TestCase):
    def member(self, pid, pgrp=50, session=50, protected=None, never=None, name='w'):
        p = bustd.Process()
        p.pid, p.pgrp, p.session, p.name = pid, pgrp, session, name
        p.protected, p.never = protected, never
        return p

    def test_table(self):
        cases = [
            ('fine', [self.member(50), self.member(51)], None, None),
            ('pid 1', [self.member(1), self.member(51)], None, 'PID 1'),
            ('bustd itself', [self.member(50), self.member(999)], None, 'bustd itself'),
            ("bustd's group", [self.member(50, pgrp=77)], None, 'bustd itself'),
            ("bustd's session", [self.member(50, session=88)], None, 'own session'),
            ('protected member', [self.member(50), self.member(51, protected='-u x', name='x')],
             None, 'contains 51 x (-u x)'),
            ('outside the cgroup', [self.member(50), self.member(51)], {50}, 'outside'),
        ]
        for name, members, cgroup, expected in cases:
            with self.subTest(name):
                refusal = bustd.group_refusal(members, 999, 77, 88, cgroup)
                if expected is None:
                    self.assertIsNone(refusal)
                else:
                    self.assertIn(expected, refusal)


# ----------------------------------------------------------------------------
# Killing real processes the tests started (fake meminfo, real /proc/PID)
# ----------------------------------------------------------------------------

class RealKillTest(TempDirTest):
    """The daemon's real kill path against the test's own children.

    The fake /proc holds a fake meminfo and symlinks to the real /proc/PID of
    children started here with oom_score_adj 1000, so nothing else can be
    chosen and no real memory pressure is needed.
    """

    def daemon(self, calls=None, **kw):
        log, sink = make_log(verbose=True)
        s = settings(self.proc, **kw)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        calls = calls or bustd.load_kernel_calls()
        d = bustd.Daemon(s, sensor, bustd.Policy(s), calls, log,
                         sleep=lambda seconds: None)
        d.start()
        return d, sink

    def victim(self, *args, **popen):
        child = start_victim(*args, **popen)
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        return child

    def test_sigterm_when_memory_is_low(self):
        bystander = self.victim()
        os.unlink(os.path.join(self.proc.root, str(bystander.pid)))   # not in the tree: invisible
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)      # 8.5 %: SIGTERM
        d, sink = self.daemon()
        self.assertEqual(d.step(), 0.0)
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertIsNone(bystander.poll())
        text = sink.text()
        self.assertIn('kill: SIGTERM pid=%d uid=%d name="python3"' % (child.pid, os.getuid()), text)
        self.assertIn('oom_score_adj=1000', text)
        self.assertIn('mem_available=700.0MiB(8.5%)', text)
        self.assertIn('exited: pid=%d' % child.pid, text)
        self.assertIn('chose pid %d because' % child.pid, text)

    def test_sigkill_at_the_kill_level(self):
        child = self.victim('ignore-term')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=300 * MIB)      # 3.7 %: SIGKILL
        d, sink = self.daemon()
        d.step()
        self.assertEqual(reap(child), -signal.SIGKILL)
        self.assertIn('kill: SIGKILL pid=%d' % child.pid, sink.text())

    def test_nothing_happens_with_enough_memory(self):
        child = self.victim()
        d, sink = self.daemon()
        self.assertGreater(d.step(), 0)
        self.assertIsNone(child.poll())
        self.assertNotIn('kill:', sink.text())

    def test_escalates_when_memory_reaches_the_kill_level(self):
        child = self.victim('ignore-term')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        timer = threading.Timer(0.3, self.proc.meminfo, kwargs=dict(
            total_kib=8 * GIB, avail_kib=100 * MIB))
        timer.start()
        self.addCleanup(timer.cancel)
        d.step()
        self.assertEqual(reap(child), -signal.SIGKILL)
        self.assertIn('kill: SIGTERM pid=%d' % child.pid, sink.text())
        self.assertIn('escalating to SIGKILL: pid %d reached the SIGKILL level' % child.pid,
                      sink.text())

    def test_escalates_after_the_grace_time_if_memory_stays_low(self):
        child = self.victim('ignore-term')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log()
        target = bustd.Target(self.scan_one(child.pid), bustd.load_kernel_calls(), self.proc.root)
        self.assertTrue(target.open())
        result = bustd.kill_and_wait(target, signal.SIGTERM, lambda: signal.SIGTERM, log,
                                     grace_s=0.3)
        target.close()
        self.assertTrue(result.exited)
        self.assertEqual(result.signal, signal.SIGKILL)
        self.assertGreaterEqual(result.elapsed_s, 0.3)
        self.assertEqual(reap(child), -signal.SIGKILL)
        self.assertIn('ignored SIGTERM', sink.text())

    def test_no_escalation_when_memory_recovered(self):
        child = self.victim('ignore-term')
        log, sink = make_log()
        target = bustd.Target(self.scan_one(child.pid), bustd.load_kernel_calls(), self.proc.root)
        self.assertTrue(target.open())
        result = bustd.kill_and_wait(target, signal.SIGTERM, lambda: 0, log, grace_s=0.2)
        target.close()
        self.assertFalse(result.exited)
        self.assertIn('memory recovered', result.note)
        self.assertIsNone(child.poll())

    def scan_one(self, pid):
        s = settings(self.proc)
        return [p for p in bustd.scan_processes(s.proc, bustd.Policy(s)) if p.pid == pid][0]

    def test_recycled_pid_is_never_signalled(self):
        child = self.victim()
        victim = self.scan_one(child.pid)
        victim.starttime -= 1          # as if the pid now belonged to a newer process
        for calls in (bustd.load_kernel_calls(), no_kernel_calls()):
            with self.subTest(pidfd=calls.pidfd_open is not None):
                target = bustd.Target(victim, calls, self.proc.root)
                self.assertFalse(target.open())
                self.assertFalse(target.send(signal.SIGTERM))
                target.close()
        self.assertIsNone(child.poll())

    def test_kill_without_pidfds_uses_the_start_time_check(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon(calls=no_kernel_calls())
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertIn('exited: pid=%d' % child.pid, sink.text())

    def test_recovery_during_the_scan_means_no_kill(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        d.sensor.read(d.reading, d.th)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=4 * GIB)   # recovered before act()
        d.act(signal.SIGTERM, 0.0)
        self.assertIsNone(child.poll())
        self.assertIn('memory recovered during the victim scan', sink.text())

    def test_victim_gone_before_the_signal(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        victim = self.scan_one(child.pid)
        child.kill()
        child.wait()
        target = bustd.Target(victim, d.calls, self.proc.root)
        self.assertFalse(target.open())

    def test_dry_run_sends_nothing_and_logs_once_a_second(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        now = [100.0]
        d, sink = self.daemon(dry_run=True)
        d.clock = lambda: now[0]
        for _ in range(5):
            d.step()
            now[0] += 0.1
        self.assertIsNone(child.poll())
        self.assertEqual(sink.text().count('dry run, no signal sent: kill: SIGTERM pid=%d'
                                           % child.pid), 1)
        now[0] += 1.0
        d.step()
        self.assertEqual(sink.text().count('dry run, no signal sent'), 2)
        self.assertIn('dry run: chose pid %d because: highest oom_score' % child.pid, sink.text())

    def test_only_one_victim_per_step(self):
        first = self.victim()
        second = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        d.step()
        killed = [c for c in (first, second) if c.poll() is not None or
                  'exited: pid=%d' % c.pid in sink.text()]
        self.assertEqual(len(killed), 1)
        self.assertEqual(sink.text().count('kill: '), 1)

    def test_nothing_killable_is_logged_and_backs_off(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        self.proc.add(1, name='init', oom_score=2000)
        self.proc.add(20, name='sshd', oom_score=1000)
        d, sink = self.daemon()
        self.assertEqual(d.step(), bustd.NO_VICTIM_RETRY_S)
        self.assertEqual(d.step(), bustd.NO_VICTIM_RETRY_S)
        self.assertEqual(sink.text().count('no process may be killed'), 1)

    def test_report_interval(self):
        now = [50.0]
        d, sink = self.daemon(report_interval_s=60.0)
        d.clock = lambda: now[0]
        for _ in range(3):          # the first poll reports, the next ones within 60 s don't
            d.step()
            now[0] += 20
        d.step()                    # 60 s later
        reports = [m for _, m in sink.lines if m.startswith('mem avail:')]
        self.assertEqual(reports, ['mem avail: 6.0 GiB of 8.0 GiB (75.0%), swap free: 0 KiB '
                                   'of 0 KiB (0.0%), psi some avg10: 0.00'] * 2)
        self.assertEqual(d.step(), bustd.sleep_time_s(d.reading, d.th, d.fill.rate_kib_s))

    def test_a_signal_that_fails_is_no_kill_and_no_spin(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        calls = bustd.load_kernel_calls()
        if calls.pidfd_send_signal is None:
            self.skipTest('no pidfds here')

        def refused(fd, sig):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        calls.pidfd_send_signal = refused              # as an LSM might answer
        d, sink = self.daemon(calls=calls)
        self.assertEqual(d.step(), bustd.NO_VICTIM_RETRY_S)
        self.assertEqual(d.step(), bustd.NO_VICTIM_RETRY_S)
        self.assertEqual(d.kills, 0)
        self.assertEqual(sink.text().count('cannot signal it: Operation not permitted'), 1)
        self.assertIsNone(child.poll())

    def test_levels_above_a_lowered_total_fall_back_to_the_defaults(self):
        d, sink = self.daemon(mem_percent=(100.0, 100.0), mem_size_kib=(4 * GIB, 2 * GIB))
        self.assertEqual(d.th.mem_term_kib, 4 * GIB)
        self.proc.meminfo(total_kib=2 * GIB, avail_kib=GIB)     # the limit went down
        d.step()
        self.assertEqual((d.th.mem_term_kib, d.th.mem_kill_kib), (2 * GIB // 10, 2 * GIB // 20))
        self.assertIn('-m/-M is not below the memory total 2.0 GiB now', sink.text())

    def test_totals_change_recomputes_thresholds(self):
        d, sink = self.daemon()
        self.assertEqual(d.th.mem_term_kib, 8 * GIB // 10)
        self.proc.meminfo(total_kib=16 * GIB, avail_kib=12 * GIB)
        d.step()
        self.assertEqual(d.th.mem_term_kib, 16 * GIB // 10)
        self.assertIn('thresholds recomputed', sink.text())


class PreArmedVictimTest(TempDirTest):
    """The victim ranked ahead of time near a level, and its validation at the kill."""

    PID = 4194400    # above any pid_max: never a real process

    def daemon(self, calls=None, **kw):
        log, sink = make_log(verbose=True)
        s = settings(self.proc, **kw)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        now = [100.0]
        d = bustd.Daemon(s, sensor, bustd.Policy(s), calls or no_kernel_calls(), log,
                         clock=lambda: now[0], sleep=lambda seconds: None)
        d.start()
        return d, sink, now

    def armed_in_a_fake_tree(self, **kw):
        """Arm on a fake tree: the hog (PID) ahead of a runner-up at 300; return (daemon, log, clock)."""
        self.proc.add(self.PID, 'hog', oom_score=600)
        self.proc.add(self.PID + 1, 'other', oom_score=300)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)      # 13.4 %: near
        d, sink, now = self.daemon(**kw)
        self.assertGreater(d.step(), 0)
        self.assertIsNotNone(d.armed)
        self.assertEqual(d.armed.victim.pid, self.PID)
        self.assertEqual(d.armed.runner_up, 300)
        return d, sink, now

    def test_armed_only_near_a_level_and_let_go_when_far(self):
        self.proc.add(self.PID, 'hog', oom_score=600)
        d, sink, now = self.daemon()
        d.step()                                                         # 75 %: far
        self.assertIsNone(d.armed)
        self.assertTrue(d.far)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        now[0] += 1
        d.step()
        self.assertEqual(d.armed.victim.pid, self.PID)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)
        now[0] += 1
        d.step()
        self.assertIsNone(d.armed)

    def test_rankings_are_rate_limited(self):
        d, sink, now = self.armed_in_a_fake_tree()
        first = d.armed
        now[0] += bustd.ARM_REFRESH_S / 2
        d.step()
        self.assertIs(d.armed, first)                   # too soon: the same ranking
        now[0] += bustd.ARM_REFRESH_S
        d.step()
        self.assertIsNot(d.armed, first)
        self.assertEqual(d.armed.at_s, now[0])

    def test_no_pre_arming_with_process_group_kills(self):
        self.proc.add(self.PID, 'hog', oom_score=600)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        d, sink, now = self.daemon(kill_pgroup=True)
        d.step()
        self.assertIsNone(d.armed)

    def test_refusals(self):
        """Each change since the ranking that must force a full ranking instead."""
        def recycled(proc):
            proc.add(self.PID, 'hog', oom_score=600, starttime=9999)

        def exited(proc):
            proc.remove(self.PID)

        def zombie(proc):
            proc.add(self.PID, 'hog', oom_score=600, state='Z')

        def minus_1000(proc):
            proc.add(self.PID, 'hog', oom_score=0, adj=-1000)

        def renamed_to_a_protected_name(proc):
            proc.add(self.PID, 'sshd', oom_score=600)

        def runner_up_may_have_caught_up(proc):
            # 300 + 3.4 % of RAM used since (~34 points) > 330
            proc.add(self.PID, 'hog', oom_score=330)
            proc.meminfo(total_kib=8 * GIB, avail_kib=820 * MIB)

        cases = [
            (recycled, 'its pid was recycled'),
            (exited, 'it exited'),
            (zombie, 'it exited'),     # a zombie counts as gone
            (minus_1000, 'oom_score_adj -1000'),
            (renamed_to_a_protected_name, 'it is protected now (default: sshd'),
            (runner_up_may_have_caught_up, 'another process may have caught up (280 MiB used'),
        ]
        for change, why in cases:
            with self.subTest(change.__name__):
                self.proc = FakeProc(os.path.join(self.tmp, change.__name__))
                d, sink, now = self.armed_in_a_fake_tree()
                self.proc.meminfo(total_kib=8 * GIB, avail_kib=900 * MIB)
                change(self.proc)
                d.sensor.read_exact(d.reading, d.th)
                why_not = d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                          now[0] + 0.1)
                self.assertTrue(why_not and why_not.startswith(why), why_not)

    def test_a_stale_ranking_is_not_used(self):
        d, sink, now = self.armed_in_a_fake_tree()
        d.sensor.read_exact(d.reading, d.th)
        self.assertIsNone(d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                          now[0] + bustd.ARM_MAX_AGE_S))
        self.assertEqual(d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                         now[0] + bustd.ARM_MAX_AGE_S + 0.01),
                         'the ranking is 1.01 s old')

    def test_still_ahead_and_fresh(self):
        d, sink, now = self.armed_in_a_fake_tree()
        self.proc.add(self.PID, 'hog', oom_score=700, rss_pages=9999)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=900 * MIB)
        d.sensor.read_exact(d.reading, d.th)
        armed = d.armed
        self.assertIsNone(armed.refusal(d.settings.proc, d.policy, d.reading, None, now[0]))
        self.assertEqual((armed.victim.oom_score, armed.victim.rss_kib), (700, 9999 * 4))

    def test_outside_the_watched_cgroup(self):
        d, sink, now = self.armed_in_a_fake_tree()
        d.sensor.read_exact(d.reading, d.th)
        self.assertEqual(d.armed.refusal(d.settings.proc, d.policy, d.reading,
                                         {self.PID + 1}, now[0]), 'it left the watched cgroup')

    def test_a_born_process_may_outrank_with_prefer(self):
        import re
        d, sink, now = self.armed_in_a_fake_tree(prefer_re=re.compile('nothing-matches'))
        self.assertEqual(d.armed.runner_up, 300)       # the runner-up beats a newborn's 300
        self.proc.add(self.PID + 1, 'other', oom_score=100)
        now[0] += 1
        d.step()
        self.assertEqual(d.armed.runner_up, bustd.PREFER_ADJUST)

    def test_a_refused_victim_falls_back_to_a_full_ranking(self):
        d, sink, now = self.armed_in_a_fake_tree(dry_run=True)
        self.proc.add(self.PID, 'sshd', oom_score=600)       # protected since the ranking
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        now[0] += 0.1
        d.step()
        text = sink.text()
        self.assertIn('pre-armed pid %d hog not used: it is protected now' % self.PID, text)
        self.assertIn('dry run, no signal sent: kill: SIGTERM pid=%d ' % (self.PID + 1), text)
        self.assertIsNone(d.armed)


class IdleLoopTest(TempDirTest):
    """The idle wake-up: sleep, one reading, the schedule; back to step() when it matters."""

    def daemon(self, on_sleep):
        log, sink = make_log()
        s = settings(self.proc)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        slept = []
        now = [10.0]

        def sleep(seconds):
            slept.append(seconds)
            now[0] += seconds
            on_sleep(len(slept), d)
        d = bustd.Daemon(s, sensor, bustd.Policy(s), no_kernel_calls(), log,
                         clock=lambda: now[0], sleep=sleep,
                         fill=bustd.FillModel(256 * MIB, 2))     # 512 MiB/s
        d.start()
        self.assertGreater(d.step(), 0)
        self.assertTrue(d.far)
        return d, slept

    def test_returns_when_a_reading_comes_near_a_level(self):
        def on_sleep(n, d):
            self.proc.meminfo(total_kib=8 * GIB, avail_kib=(3 - n) * GIB)   # 2, 1 GiB...
        d, slept = self.daemon(on_sleep)
        d.idle(0.1, 100.0)
        self.assertEqual(len(slept), 2)         # 1 GiB is below the near band (15 %)
        # The second sleep came from the schedule on the 2 GiB reading.
        self.assertAlmostEqual(slept[1], (2 * GIB - d.th.mem_term_kib) / d.fill.rate_kib_s)

    def test_learns_a_fast_drop_between_idle_readings(self):
        def on_sleep(n, d):
            self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB - n * 512 * MIB)
        d, slept = self.daemon(on_sleep)
        d.idle(0.25, 100.0)                    # 512 MiB per 0.25 s: 2 GiB/s seen
        self.assertEqual(d.fill.rate_kib_s, bustd.FILL_SAFETY * 2 * GIB)

    def test_returns_after_the_budget_and_on_signals(self):
        d, slept = self.daemon(lambda n, d: None)
        d.idle(0.3, 1.0)
        self.assertEqual(len(slept), 2)        # a full step at least every budget
        del slept[:]

        def stop_on_second(n, d):
            if n == 2:
                d.flags.usr1 = True
        d, slept = self.daemon(stop_on_second)
        d.idle(0.01, 100.0)
        self.assertEqual(len(slept), 2)

    def test_a_far_sleeper_is_released_whichever_way_the_loop_ends(self):
        class Sleeper(object):
            def __init__(self):
                self.calls, self.released = 0, 0

            def far(self, seconds):
                self.calls += 1
                return self.calls == 3        # a signal on the third sleep

            def release(self):
                self.released += 1
        d, slept = self.daemon(lambda n, d: None)
        d.far_sleep = Sleeper()
        d.idle(0.01, 100.0)
        self.assertEqual((d.far_sleep.calls, d.far_sleep.released), (3, 1))
        d.far_sleep = Sleeper()
        d.idle(0.6, 1.0)                          # the budget ends it
        self.assertEqual((d.far_sleep.calls, d.far_sleep.released), (2, 1))
        self.assertEqual(slept, [])               # the plain sleep is for full steps

    def test_the_loop_uses_the_idle_path_only_far_from_the_levels(self):
        calls = []

        def on_sleep(n, d):
            if n == 2:
                self.proc.meminfo(total_kib=8 * GIB, avail_kib=1 * GIB)     # near
            if n >= 4:
                d.flags.stop = signal.SIGTERM
        d, slept = self.daemon(on_sleep)
        real_idle = d.idle
        d.idle = lambda *a: calls.append(a) or real_idle(*a)
        d.run()
        self.assertEqual(len(slept), 4)
        self.assertEqual([budget for _, budget in calls], [bustd.IDLE_STEP_EVERY_S] * 2)


class PreArmedKillTest(TempDirTest):
    """The real kill path with a pre-armed victim: the test's own children only."""

    daemon = RealKillTest.daemon     # the same fake /proc of real children
    victim = RealKillTest.victim

    def test_the_pre_armed_victim_is_signalled_without_a_ranking(self):
        for calls in (bustd.load_kernel_calls(), no_kernel_calls()):
            with self.subTest(pidfd=calls.pidfd_open is not None):
                child = self.victim()
                self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)   # near: armed
                d, sink = self.daemon(calls)
                d.step()
                self.assertEqual(d.armed.victim.pid, child.pid)
                scans = []
                real_find_victim = bustd.find_victim
                bustd.find_victim = lambda *args: scans.append(args) or real_find_victim(*args)
                try:
                    self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
                    self.assertEqual(d.step(), 0.0)
                finally:
                    bustd.find_victim = real_find_victim
                self.assertEqual(reap(child), -signal.SIGTERM)
                self.assertEqual(scans, [])
                text = sink.text()
                self.assertIn('kill: SIGTERM pid=%d' % child.pid, text)
                self.assertRegex(text, r'latency: [0-9.]+ ms from the deciding reading to '
                                       r'the signal \(pre-armed\)')
                os.unlink(os.path.join(self.proc.root, str(child.pid)))

    def test_an_armed_victim_that_exited_is_not_hit_and_the_next_is_found(self):
        first = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        d, sink = self.daemon()
        d.step()
        self.assertIsNotNone(d.armed)
        armed_pid = d.armed.victim.pid
        second = self.victim()
        other = first if armed_pid == second.pid else second
        for child in (first, second):
            if child.pid == armed_pid:
                stop(child)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d.step()
        self.assertEqual(reap(other), -signal.SIGTERM)
        text = sink.text()
        self.assertIn('pre-armed pid %d python3 not used: it exited' % armed_pid, text)
        self.assertRegex(text, r'latency: [0-9.]+ ms .*\(full ranking\)')

    def test_the_user_name_is_looked_up_after_the_signal(self):
        # A passwd lookup may read a file evicted from the page cache: never before the kill.
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        calls = bustd.load_kernel_calls()
        if calls.pidfd_send_signal is None:
            self.skipTest('no pidfds here')
        order = []
        send = calls.pidfd_send_signal
        calls.pidfd_send_signal = lambda fd, sig: order.append('signal') or send(fd, sig)
        d, sink = self.daemon(calls)
        d.user_name = lambda uid: order.append('user name') or str(uid)
        d.notifier = bustd.Notifier(d.settings, bustd.Helpers(d.log), d.log, d.user_name, {})
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertEqual(order[:2], ['signal', 'user name'])

    def test_the_latency_line_is_only_printed_with_verbose(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log(verbose=False)
        s = settings(self.proc)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        d = bustd.Daemon(s, sensor, bustd.Policy(s), bustd.load_kernel_calls(), log,
                         sleep=lambda seconds: None)
        d.start()
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertNotIn('latency:', sink.text())


class GroupKillTest(TempDirTest):
    """-g against a process group the test created: a parent and its children."""

    GROUP = textwrap.dedent("""
        import os, signal, sys, time
        with open('/proc/self/oom_score_adj', 'w') as f:
            f.write('1000')
        kids = []
        for i in range(3):
            pid = os.fork()
            if pid == 0:
                if 'stubborn' in sys.argv:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    time.sleep(1)
            kids.append(pid)
        sys.stdout.write(' '.join(map(str, kids)) + '\\n')
        sys.stdout.flush()
        while True:
            time.sleep(1)
    """)

    def start_group(self, *args):
        leader = subprocess.Popen([sys.executable, '-c', self.GROUP] + list(args),
                                  stdout=subprocess.PIPE, start_new_session=True)
        kids = [int(x) for x in leader.stdout.readline().split()]

        def cleanup():
            try:
                os.killpg(leader.pid, signal.SIGKILL)
            except OSError:
                pass
            leader.wait()
            leader.stdout.close()
        self.addCleanup(cleanup)
        for pid in [leader.pid] + kids:
            self.proc.link(pid)
        return leader, kids

    def run_daemon(self, **kw):
        log, sink = make_log(verbose=True)
        s = settings(self.proc, kill_pgroup=True, **kw)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        d = bustd.Daemon(s, sensor, bustd.Policy(s), bustd.load_kernel_calls(), log)
        d.start()
        d.step()
        return sink

    def gone(self, pid):
        try:
            with open('/proc/%d/stat' % pid, 'rb') as f:
                return bustd.parse_stat(f.read()).state in ('Z', 'X')
        except OSError:
            return True

    def test_whole_group_is_killed(self):
        bystander = start_victim()     # same uid, own group, oom_score_adj 1000, not in the tree
        self.addCleanup(stop, bystander)
        leader, kids = self.start_group()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        sink = self.run_daemon()
        self.assertEqual(reap(leader), -signal.SIGTERM)
        for pid in kids:
            self.assertTrue(self.gone(pid), pid)
        self.assertIsNone(bystander.poll())
        self.assertIn('kill: SIGTERM pgrp=%d pid=' % leader.pid, sink.text())

    def test_group_that_ignores_sigterm_is_escalated(self):
        leader, kids = self.start_group('stubborn')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        timer = threading.Timer(0.3, self.proc.meminfo, kwargs=dict(
            total_kib=8 * GIB, avail_kib=100 * MIB))
        timer.start()
        self.addCleanup(timer.cancel)
        sink = self.run_daemon()
        reap(leader)
        for pid in kids:
            self.assertTrue(self.gone(pid), pid)
        self.assertIn('escalating to SIGKILL', sink.text())

    def test_refuses_a_group_in_its_own_session(self):
        child = start_victim()           # same session as this test (and the daemon)
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        sink = self.run_daemon()
        self.assertEqual(reap(child), -signal.SIGTERM)   # killed alone
        self.assertIn('not signalling process group', sink.text())


# ----------------------------------------------------------------------------
# cgroup mode: fake trees, then real memory pressure in a test-made cgroup
# ----------------------------------------------------------------------------

class FakeCgroupTest(TempDirTest):
    def make(self, version, files):
        path = os.path.join(self.tmp, 'cg', 'parent', 'child')
        os.makedirs(path)
        for name, text in files.items():
            with open(os.path.join(path if '/' not in name else os.path.join(self.tmp, 'cg'),
                                   name.split('/')[-1]), 'w') as f:
                f.write(text)
        log, _ = make_log()
        sensor = bustd.CgroupSensor(path, version, bustd.MachineSensor(self.proc.root), log)
        return path, sensor

    def test_v2_available_counts_file_cache_and_ancestor_limits(self):
        path, sensor = self.make(2, {
            'memory.current': '%d\n' % (200 << 20), 'memory.max': 'max\n',
            'memory.stat': 'anon 150000000\nfile 50000000\nactive_file %d\ninactive_file %d\n'
                           % (10 << 20, 20 << 20),
            'memory.swap.current': '0\n', 'memory.swap.max': 'max\n',
            'memory.pressure': 'some avg10=12.00 avg60=0 avg300=0 total=1\n'
                               'full avg10=1.00 avg60=0 avg300=0 total=1\n'})
        self.write_files(os.path.dirname(path), {     # the parent's limit applies
            'memory.max': '%d\n' % (256 << 20), 'memory.current': '%d\n' % (200 << 20),
            'memory.stat': 'active_file %d\ninactive_file %d\n' % (10 << 20, 20 << 20)})
        self.assertEqual(sensor.check(), [])
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual(r.mem_total_kib, 256 * MIB)
        self.assertEqual(r.mem_available_kib, (256 - 200 + 30) * MIB)
        self.assertEqual(r.psi_some_avg10, 12.0)
        self.assertEqual(r.swap_total_kib, 0)     # the fake machine has no swap

    def test_a_parents_limit_is_shared_with_siblings(self):
        """Parent: 200 MiB limit, 189 MiB used (siblings); us: 32 MiB, no limit of our own."""
        path, sensor = self.make(1, {
            'memory.usage_in_bytes': '%d\n' % (32 << 20),
            'memory.limit_in_bytes': '9223372036854771712\n',
            'memory.stat': 'total_active_file 0\ntotal_inactive_file 0\n'})
        self.write_files(os.path.dirname(path), {
            'memory.limit_in_bytes': '%d\n' % (200 << 20),
            'memory.usage_in_bytes': '%d\n' % (189 << 20),
            'memory.stat': 'total_active_file %d\ntotal_inactive_file 0\n' % (1 << 20)})
        sensor.check()
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (200 * MIB, 12 * MIB))
        th = bustd.compute_thresholds(bustd.Settings(), 200 * MIB, 0)
        self.assertEqual(bustd.decide(r, th), signal.SIGTERM)
        self.assertEqual(sensor.read(bustd.Reading(), th).mem_available_kib, 12 * MIB)

    def test_v1_limits_up_the_hierarchy_and_total_counters(self):
        path, sensor = self.make(1, {
            'memory.usage_in_bytes': '%d\n' % (400 << 20),
            'memory.limit_in_bytes': '9223372036854771712\n',
            'memory.stat': 'cache 1\ntotal_active_file %d\ntotal_inactive_file %d\n'
                           % (16 << 20, 16 << 20),
            'memory.memsw.usage_in_bytes': '%d\n' % (400 << 20)})
        self.write_files(os.path.dirname(path), {
            'memory.limit_in_bytes': '%d\n' % (512 << 20),
            'memory.usage_in_bytes': '%d\n' % (400 << 20),
            'memory.stat': 'total_active_file %d\ntotal_inactive_file %d\n'
                           % (16 << 20, 16 << 20)})
        warnings = sensor.check()
        self.assertEqual(len(warnings), 1)
        self.assertIn('cgroup v1', warnings[0])           # no PSI there
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (512 * MIB, (112 + 32) * MIB))

    def test_a_lowered_limit_is_noticed(self):
        path, sensor = self.make(2, {
            'memory.current': '%d\n' % (190 << 20), 'memory.max': '%d\n' % (2 << 30),
            'memory.stat': ''})
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), 2 * GIB, 0)
        self.assertFalse(sensor.read(bustd.Reading(), th).exact)
        self.write_files(path, {'memory.max': '%d\n' % (200 << 20)})
        sensor.next_refresh = 0          # as if LIMIT_REFRESH_S had passed
        r = sensor.read(bustd.Reading(), th)
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (200 * MIB, 10 * MIB))

    def write_files(self, directory, files):
        for name, text in files.items():
            with open(os.path.join(directory, name), 'w') as f:
                f.write(text)

    def test_cheap_reading_is_limit_minus_usage(self):
        path, sensor = self.make(2, {
            'memory.current': '%d\n' % (100 << 20), 'memory.max': '%d\n' % (1 << 30),
            'memory.stat': 'active_file %d\n' % (500 << 20)})
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), GIB, 0)
        r = sensor.read(bustd.Reading(), th)
        self.assertFalse(r.exact)
        self.assertEqual(r.mem_available_kib, 924 * MIB)
        with open(os.path.join(path, 'memory.current'), 'w') as f:
            f.write('%d\n' % (950 << 20))
        r = sensor.read(bustd.Reading(), th)
        self.assertTrue(r.exact)
        self.assertEqual(r.mem_available_kib, (74 + 500) * MIB)

    def test_no_limit_falls_back_to_the_machine(self):
        path, sensor = self.make(2, {'memory.current': '1000\n', 'memory.max': 'max\n',
                                     'memory.stat': ''})
        warnings = sensor.check()
        self.assertTrue(any('no memory limit' in w for w in warnings))
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=3 * GIB)
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (8 * GIB, 3 * GIB))

    def test_member_pids_include_descendants(self):
        path, sensor = self.make(2, {'memory.current': '1\n', 'cgroup.procs': '10\n11\n'})
        os.makedirs(os.path.join(path, 'sub'))
        with open(os.path.join(path, 'sub', 'cgroup.procs'), 'w') as f:
            f.write('12\n')
        self.assertEqual(sensor.member_pids(), {10, 11, 12})

    def test_resolve(self):
        v1 = os.path.join(self.tmp, 'fs', 'memory', 'svc')
        v2 = os.path.join(self.tmp, 'fs', 'unified', 'app.slice')
        os.makedirs(v1)
        os.makedirs(v2)
        open(os.path.join(v1, 'memory.usage_in_bytes'), 'w').close()
        open(os.path.join(v2, 'memory.current'), 'w').close()
        self.proc.write('self/mountinfo', (
            '30 20 0:26 / %s/fs/unified rw - cgroup2 cgroup2 rw\n'
            '31 20 0:27 / %s/fs/memory rw,relatime - cgroup cgroup rw,memory\n'
            % (self.tmp, self.tmp)).encode())
        self.proc.write('self/cgroup', b'4:memory:/svc\n0::/app.slice\n')
        resolve = lambda spec: bustd.resolve_cgroup(spec, self.proc.root, self.tmp)
        self.assertEqual(resolve('auto'), (v2, 2))
        self.assertEqual(resolve(v1), (v1, 1))
        self.assertEqual(resolve('svc'), (v1, 1))
        self.assertEqual(resolve('/app.slice'), (v2, 2))
        for bad, message in ((self.tmp, 'not a cgroup'), ('nope', 'no such cgroup')):
            with self.assertRaises(ValueError) as cm:
                resolve(bad)
            self.assertIn(message, str(cm.exception))

    def test_cli_bad_cgroup_is_exit_2(self):
        unreadable = os.path.join(self.tmp, 'cg-broken')
        os.makedirs(os.path.join(unreadable, 'memory.current'))   # there, but not a file
        os.makedirs(os.path.join(unreadable, 'memory.max'))
        for spec in (self.tmp, os.path.join(self.tmp, 'missing'), unreadable):
            with self.subTest(spec=spec):
                out = run_cli('-n', '--cgroup', spec, '--proc', self.proc.root)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertEqual(len(out.stderr.strip().split('\n')), 1, out.stderr)
                self.assertIn('--cgroup', out.stderr)


def run_cli(*args, **kw):
    """Run bustd.py as a program; return the CompletedProcess (text)."""
    kw.setdefault('timeout', 60)
    return subprocess.run([sys.executable, BUSTD] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, **kw)


class TestCgroup(object):
    """A memory cgroup made by a test under its own cgroup; removed with all it holds."""

    def __init__(self, limit_mib):
        base, version, why = self.find_parent()
        if base is None:
            raise unittest.SkipTest('cannot create a memory cgroup here: ' + why)
        self.version = version
        self.path = tempfile.mkdtemp(prefix='bustd-test-', dir=base)
        limit_file = 'memory.max' if version == 2 else 'memory.limit_in_bytes'
        self.write(limit_file, str(limit_mib << 20))
        if version == 1 and os.path.exists(os.path.join(self.path, 'memory.memsw.limit_in_bytes')):
            self.write('memory.memsw.limit_in_bytes', str(limit_mib << 20))
        elif version == 2 and os.path.exists(os.path.join(self.path, 'memory.swap.max')):
            self.write('memory.swap.max', '0')

    @staticmethod
    def find_parent():
        if os.geteuid() != 0:
            return None, None, 'not root'
        with open('/proc/self/mountinfo') as f:
            mounts = bustd.parse_mountinfo_cgroups(f.read())
        with open('/proc/self/cgroup') as f:
            own = bustd.parse_proc_cgroup(f.read())
        why = 'no memory controller mounted'
        for key in ('v1', 'v2'):
            if key not in mounts or key not in own:
                continue
            mountpoint, root = mounts[key]
            inner = own[key][len(root):] if root != '/' and own[key].startswith(root) else own[key]
            base = os.path.normpath(mountpoint + '/' + inner.lstrip('/'))
            if key == 'v2':
                try:
                    with open(os.path.join(base, 'cgroup.subtree_control')) as f:
                        if 'memory' not in f.read().split():
                            why = 'cgroup v2 without the memory controller for children of ' + base
                            continue
                except OSError as exc:
                    why = str(exc)
                    continue
            if os.access(base, os.W_OK):
                return base, 1 if key == 'v1' else 2, ''
            why = '%s is not writable' % base
        return None, None, why

    def write(self, name, value):
        with open(os.path.join(self.path, name), 'w') as f:
            f.write(value)

    def read(self, name):
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def oom_kills(self):
        """The kernel's own count of OOM kills in this cgroup."""
        text = self.read('memory.events' if self.version == 2 else 'memory.oom_control')
        for line in text.split('\n'):
            if line.startswith('oom_kill '):
                return int(line.split()[1])
        return 0

    def pids(self):
        return [int(x) for x in self.read('cgroup.procs').split()]

    def join(self):
        """preexec_fn: move the new child into the cgroup before it allocates."""
        path = os.path.join(self.path, 'cgroup.procs')

        def join():
            with open(path, 'w') as f:
                f.write(str(os.getpid()))
        return join

    def remove(self):
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:         # every process in here was started by the test
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.05)


HOG_CODE = textwrap.dedent(r"""
    import os, signal, sys, time
    args = sys.argv[1:]
    rate = float(args[args.index('--rate') + 1]) if '--rate' in args else 0
    if '--ignore-term' in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if '--fork' in args:
        for i in range(int(args[args.index('--fork') + 1])):
            if os.fork() == 0:
                break
    chunks, start = [], time.monotonic()
    while True:
        chunks.append(b'\x01' * (1 << 20))       # touches every page
        if rate:
            delay = start + len(chunks) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
""")

INNOCENT_CODE = textwrap.dedent(r"""
    import sys, time
    keep = b'\x01' * (int(sys.argv[1]) << 20)
    sys.stdout.write('holding\n')
    sys.stdout.flush()
    while True:
        time.sleep(1)
""")


class Daemon(object):
    """bustd.py run as a program, its stderr collected line by line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, BUSTD, '-n'] + list(args),
                                     stderr=subprocess.PIPE, universal_newlines=True)
        self.lines = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self.read)
        self.reader.daemon = True
        self.reader.start()
        if not self.ready.wait(30):
            self.stop()
            raise AssertionError('bustd never got ready:\n' + self.text())

    def read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip('\n'))
            if 'ready: watching' in line:
                self.ready.set()

    def text(self):
        return '\n'.join(self.lines)

    def wait_for(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(5)
        self.proc.stderr.close()
        return code


class CgroupPressureTest(unittest.TestCase):
    """The real daemon against real memory exhaustion, inside a test-made 256 MiB cgroup.

    Checked against the kernel's own counters: the hog dies of bustd's
    signal and the cgroup's oom_kill count stays 0.
    """

    LIMIT_MIB = 256

    def setUp(self):
        try:
            self.cgroup = TestCgroup(self.LIMIT_MIB)
        except unittest.SkipTest as exc:
            sys.stderr.write('\n[skip] %s\n' % exc)
            raise
        self.addCleanup(self.cgroup.remove)

    def start(self, code, *args, **kw):
        child = subprocess.Popen([sys.executable, '-c', code] + [str(a) for a in args],
                                 preexec_fn=self.cgroup.join(), stdout=subprocess.PIPE, **kw)
        self.addCleanup(stop, child)
        return child

    def daemon(self, *args):
        d = Daemon('--cgroup', self.cgroup.path, *args)
        self.addCleanup(d.stop)
        return d

    def assert_killed_by_bustd(self, hog, d, signals=(signal.SIGTERM, signal.SIGKILL)):
        code = reap(hog, timeout=60)
        self.assertIn(-code, signals, 'hog exit status %s\n%s' % (code, d.text()))
        self.assertTrue(d.wait_for('exited: pid=%d' % hog.pid), d.text())
        self.assertRegex(d.text(), r'kill: SIG(TERM|KILL) (pgrp=\d+ )?pid=%d ' % hog.pid)
        self.assertEqual(self.cgroup.oom_kills(), 0, "the kernel's cgroup OOM killer fired")

    def test_full_speed_hog(self):
        d = self.daemon()
        self.assertIn('watching cgroup v%d %s' % (self.cgroup.version, self.cgroup.path), d.text())
        self.assert_killed_by_bustd(self.start(HOG_CODE), d)

    def test_slow_hog_gets_sigterm(self):
        d = self.daemon()
        hog = self.start(HOG_CODE, '--rate', 50)
        self.assert_killed_by_bustd(hog, d, signals=(signal.SIGTERM,))

    def test_innocent_survives(self):
        d = self.daemon()
        innocent = self.start(INNOCENT_CODE, 40)
        self.assertEqual(innocent.stdout.readline(), b'holding\n')
        self.assert_killed_by_bustd(self.start(HOG_CODE), d)
        self.assertIsNone(innocent.poll())
        self.assertEqual(d.stop(), 0)
        self.assertIsNone(innocent.poll())

    def test_hog_ignoring_sigterm_is_escalated(self):
        d = self.daemon()
        hog = self.start(HOG_CODE, '--rate', 200, '--ignore-term')
        self.assert_killed_by_bustd(hog, d, signals=(signal.SIGKILL,))
        self.assertIn('kill: SIGTERM pid=%d' % hog.pid, d.text())
        self.assertIn('escalating to SIGKILL: pid %d' % hog.pid, d.text())

    def test_forking_hog_is_killed_with_its_group(self):
        d = self.daemon('-g')
        hog = self.start(HOG_CODE, '--fork', 3, '--rate', 100, start_new_session=True)
        self.assert_killed_by_bustd(hog, d)
        self.assertIn('kill: SIGTERM pgrp=%d' % hog.pid, d.text())
        deadline = time.monotonic() + 10
        while self.cgroup.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.cgroup.pids(), [], 'members of the group survived')


# ----------------------------------------------------------------------------
# The command line as a black box
# ----------------------------------------------------------------------------

class CliTest(TempDirTest):
    BAD = [
        (['-m', '120'], '-m/--mem-min'),
        (['-m', 'abc'], '-m/--mem-min'),
        (['-m', '5,10'], '-m/--mem-min'),
        (['-s', '200'], '-s/--swap-min'),
        (['-M', '12X'], '-M/--mem-min-size'),
        (['-S', '-1G'], '-S/--swap-min-size'),
        (['-p', 'abc'], '-p/--psi'),
        (['--psi-mem-max', '101'], '--psi-mem-max'),
        (['-r', '-1'], '-r/--report-interval'),
        (['-r', 'often'], '-r/--report-interval'),
        (['--bogus'], 'unrecognized arguments: --bogus'),
        (['-m'], '-m/--mem-min'),
        (['--match', 'pid'], '--match'),
        (['--ignore', '('], '--ignore'),
        (['--prefer', '[a'], '--prefer'),
        (['--avoid', '*x'], '--avoid'),
        (['--log-file', '/tmp/x.log', '--syslog'], '--syslog'),
        (['--notify-title', 'x'], '--notify'),
        (['--notify', '--notify-body', 'killed {bogus}'], '--notify-body'),
        (['--warn', '5'], '--warn'),
        (['-N', 'relative/hook'], '-N/--exec-after'),
        (['-P', '/nonexistent/hook'], '-P/--exec-before'),
        (['-P', 'NOT_EXECUTABLE'], '-P/--exec-before'),
        (['-M', 'inf'], '-M/--mem-min-size'),
        (['-S', '1e999'], '-S/--swap-min-size'),
        (['--notify', '--notify-body', '{pid.x}'], '--notify-body'),
        (['--notify', '--notify-title', '{pid[0]}'], '--notify-title'),
        (['-m', '100'], '-m/-M'),
        (['-M', '100G'], '-m/-M'),
    ]

    def test_bad_arguments_one_line_exit_2(self):
        plain = os.path.join(self.tmp, 'plain')
        open(plain, 'w').close()
        for argv, flag in self.BAD:
            with self.subTest(argv=argv):
                # --list: were the argument wrongly accepted, no daemon would start.
                argv = [plain if a == 'NOT_EXECUTABLE' else a for a in argv]
                out = run_cli(*(argv + ['--list']))
                self.assertEqual(out.returncode, 2, out.stderr)
                lines = out.stderr.strip().split('\n')
                self.assertEqual(len(lines), 1, out.stderr)
                self.assertTrue(lines[0].startswith('bustd: '), lines[0])
                self.assertIn(flag, lines[0])
                self.assertNotIn('Traceback', out.stderr)
                self.assertEqual(out.stdout, '')

    def test_levels_are_checked_against_the_real_total(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)
        ok = run_cli('--list', '-M', '1G', '--warn', '15', '--proc', self.proc.root)
        self.assertEqual(ok.returncode, 0, ok.stderr)          # 1 GiB is 12.5 % < 15 %
        bad = run_cli('--list', '-M', '2G', '--warn', '15', '--proc', self.proc.root)
        self.assertEqual(bad.returncode, 2)
        self.assertIn('--warn: 15% is not above the SIGTERM level 2.0 GiB', bad.stderr)
        bad = run_cli('--list', '-M', '9G', '--proc', self.proc.root)
        self.assertEqual(bad.returncode, 2)
        self.assertIn('not below the 8.0 GiB of memory there is', bad.stderr)

    def test_relative_paths_become_absolute(self):
        s = bustd.parse_settings(['--proc', 'fake', '--sys', 'fakesys', '--pidfile', 'p'])
        self.assertEqual((s.proc, s.sys_fs, s.pidfile), tuple(
            os.path.join(os.getcwd(), x) for x in ('fake', 'fakesys', 'p')))

    def test_proc_of_another_pid_namespace_is_refused(self):
        os.symlink('1', os.path.join(self.proc.root, 'self'))
        with self.assertRaises(bustd.EnvironmentProblem) as cm:
            bustd.check_pid_namespace(self.proc.root)
        self.assertIn('another PID namespace', str(cm.exception))
        bustd.check_pid_namespace('/proc')                     # ours: fine
        out = run_cli('--list', '--proc', self.proc.root)
        self.assertEqual(out.returncode, 1)
        self.assertIn('another PID namespace', out.stderr)

    def test_messages_say_how_to_fix(self):
        self.assertIn('e.g.', run_cli('-m', '5,10').stderr)
        self.assertIn('512M', run_cli('-M', 'lots').stderr)
        self.assertIn('{name}', run_cli('--notify', '--notify-body', '{x}').stderr)

    def test_help_is_a_manual(self):
        out = run_cli('--help')
        self.assertEqual(out.returncode, 0)
        for section in ('NAME', 'SYNOPSIS', 'DESCRIPTION', 'THRESHOLDS', 'EXAMPLES', 'SIGNALS',
                        'EXIT STATUS', 'PROTECTED BY DEFAULT', 'LOGS'):
            self.assertIn('\n' + section, out.stdout)
        for flag in ('--mem-min', '--swap-min', '--mem-min-size', '--swap-min-size', '--psi',
                     '--psi-mem-max', '--cgroup', '--unkillables', '--ignore', '--ignore-root-user',
                     '--no-default-unkillables', '--prefer', '--avoid', '--match', '--sort-by-rss',
                     '--kill-pgroup', '--list', '--tasks', '--notify', '--notify-title',
                     '--notify-body', '--warn', '--exec-after', '--exec-before', '--no-daemon',
                     '--pidfile', '--log-file', '--syslog', '--verbose', '--report-interval',
                     '--dry-run', '--version'):
            self.assertIn(flag, out.stdout)

    def test_version(self):
        out = run_cli('--version')
        self.assertEqual((out.returncode, out.stdout.strip()), (0, 'bustd ' + bustd.__version__))

    def test_runs_without_cap_kill_and_cap_ipc_lock(self):
        """As an ordinary user would: it warns once per missing power and runs."""
        setpriv = shutil.which('setpriv')
        if setpriv is None or os.geteuid() != 0:
            self.skipTest('needs root and setpriv (util-linux) to drop capabilities')
        d = subprocess.Popen([setpriv, '--bounding-set', '-kill,-ipc_lock', '--inh-caps',
                              '-kill,-ipc_lock', '--', sys.executable, BUSTD, '-n',
                              '--proc', self.proc.root],
                             stderr=subprocess.PIPE, universal_newlines=True)
        self.addCleanup(stop, d)
        time.sleep(2)
        d.terminate()
        _, err = d.communicate(timeout=10)
        self.assertEqual(d.returncode, 0, err)
        self.assertEqual(err.count('no CAP_KILL (not root?): only processes of uid 0 can be '
                                   'killed'), 1)
        self.assertEqual(err.count('not locking memory (no CAP_IPC_LOCK)'), 1)
        self.assertIn('ready: watching', err)
        self.assertNotIn('Traceback', err)

    def test_policy_without_cap_kill_skips_other_users(self):
        self.proc.add(10, oom_score=900, uid=1000)
        self.proc.add(11, oom_score=100, uid=0)
        s = settings(self.proc)
        victim, _ = bustd.pick_victim(bustd.scan_processes(s.proc, bustd.Policy(s, only_uid=0)))
        self.assertEqual(victim.pid, 11)

    def test_no_proc_is_exit_1(self):
        out = run_cli('-n', '--proc', os.path.join(self.tmp, 'none'))
        self.assertEqual(out.returncode, 1)
        self.assertEqual(len(out.stderr.strip().split('\n')), 1, out.stderr)
        self.assertIn('cannot read %s/none/meminfo' % self.tmp, out.stderr)

    def test_list_on_a_fake_tree(self):
        self.proc.add(10, name='sshd', oom_score=900)
        self.proc.add(11, name='hog', oom_score=800, rss_pages=1 << 20)
        out = run_cli('--list', '--proc', self.proc.root)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.strip().split('\n')
        self.assertIn('OOM_SCORE', lines[0])
        self.assertIn('protected: default: sshd', lines[1])
        self.assertIn('<- victim', lines[2])
        self.assertIn('4.0 GiB', lines[2])

    def test_list_on_this_machine(self):
        out = run_cli('--tasks')
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn('PID', out.stdout)
        rows = out.stdout.strip().split('\n')[1:]
        pids = [int(r.split()[0]) for r in rows if r.strip()[:1].isdigit()]
        self.assertIn(os.getpid(), pids)          # this test runner is a candidate

    def test_dry_run_names_the_victim_and_sends_nothing(self):
        self.proc.add(10, name='sshd', oom_score=900)
        self.proc.add(11, name='hog', oom_score=800)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=4 * GIB)
        d = Daemon('--dry-run', '-m', '99', '-V', '--proc', self.proc.root)
        self.addCleanup(d.stop)
        self.assertTrue(d.wait_for('dry run, no signal sent: kill: SIGTERM pid=11 '), d.text())
        self.assertTrue(d.wait_for('chose pid 11 because: highest oom_score 800; skipped '
                                   'protected: 10 sshd (default: sshd)'), d.text())
        self.assertEqual(d.stop(), 0)
        self.assertIn('DRY RUN', d.text())
        self.assertIn('SIGTERM received: exiting', d.text())

    def test_runs_on_this_machine_and_stops_on_sigterm_and_sigint(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig):
                d = Daemon()
                self.addCleanup(d.stop)
                text = d.text()
                for expected in ('watching the whole machine', 'SIGTERM when available memory <= 10.0%',
                                 'SIGKILL when available memory <= 5.0%', 'PSI rule:',
                                 'polling: adaptive 10..3000 ms', 'kernel features:',
                                 'protected: default: init systemd'):
                    self.assertIn(expected, text)
                start = time.monotonic()
                d.proc.send_signal(sig)
                self.assertEqual(d.stop(), 0)
                self.assertLess(time.monotonic() - start, 5)
                self.assertIn('received: exiting after 0 kill(s)', d.text())

    def test_unit_and_defaults_use_only_real_flags(self):
        help_text = run_cli('--help').stdout
        texts = []
        for name in ('bustd.service', os.path.join('etc', 'default', 'bustd')):
            with open(os.path.join(HERE, name)) as f:
                texts.append(f.read())
        import re
        flags = set(re.findall(r'(?<![\w-])(--[a-z][a-z-]+|-[a-zA-Z])(?=[\s=\'"]|$)',
                               texts[0].split('ExecStart=')[1].split('\n')[0] + '\n' +
                               '\n'.join(l for l in texts[1].split('\n')
                                         if 'BUSTD_ARGS' in l)))
        self.assertIn('--no-daemon', flags)
        for flag in flags:
            self.assertRegex(help_text, r'(?<![\w-])%s\b' % re.escape(flag), flag)


# ----------------------------------------------------------------------------
# Daemon manners (issue 3)
# ----------------------------------------------------------------------------

def read_text(path):
    """The text of a file, or '' if it does not exist (yet)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ''


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            return bustd.parse_stat(f.read()).state not in ('Z', 'X')
    except OSError:
        return False


class DaemonizeTest(TempDirTest):
    def test_daemonizes_with_pidfile_and_log_file(self):
        pidfile = os.path.join(self.tmp, 'bustd.pid')
        logfile = os.path.join(self.tmp, 'bustd.log')
        out = run_cli('--pidfile', pidfile, '--log-file', logfile, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(os.path.exists(pidfile))
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(lambda: alive(pid) and os.kill(pid, signal.SIGKILL))
        self.assertEqual(out.stdout.strip(), 'bustd: running as pid %d, logging to %s'
                         % (pid, logfile))
        self.assertTrue(alive(pid))
        with open('/proc/%d/stat' % pid, 'rb') as f:
            st = bustd.parse_stat(f.read())
        self.assertNotEqual(st.ppid, os.getpid())
        self.assertNotEqual(st.session, os.getsid(0))     # setsid: a session of its own,
        self.assertNotEqual(st.session, pid)              # not its leader: no tty can attach
        self.assertEqual(os.readlink('/proc/%d/cwd' % pid), '/')
        self.assertEqual(os.readlink('/proc/%d/fd/0' % pid), '/dev/null')
        self.assertEqual(os.readlink('/proc/%d/fd/2' % pid), '/dev/null')
        with open('/proc/%d/status' % pid) as f:
            self.assertIn('Umask:\t0022', f.read())
        self.assertTrue(wait_until(lambda: 'ready: watching' in read_text(logfile)))
        # A second one refuses the live pidfile.
        again = run_cli('--pidfile', pidfile, '--log-file', logfile)
        self.assertEqual(again.returncode, 1)
        self.assertIn('names a running bustd (pid %d)' % pid, again.stderr)
        os.kill(pid, signal.SIGTERM)
        self.assertTrue(wait_until(lambda: not alive(pid)))
        self.assertFalse(os.path.exists(pidfile))
        self.assertIn('SIGTERM received: exiting', read_text(logfile))

    def test_stale_pidfile_is_replaced(self):
        pidfile = os.path.join(self.tmp, 'bustd.pid')
        with open(pidfile, 'w') as f:
            f.write('999999999\n')
        d = Daemon('--pidfile', pidfile)
        self.addCleanup(d.stop)
        with open(pidfile) as f:
            self.assertEqual(int(f.read()), d.proc.pid)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(pidfile))

    def test_unwritable_log_file_is_exit_1(self):
        out = run_cli('--log-file', os.path.join(self.tmp, 'no', 'such', 'dir.log'))
        self.assertEqual(out.returncode, 1)
        self.assertIn('cannot open the log file', out.stderr)


class ServiceManagerTest(TempDirTest):
    def notify_socket(self, abstract=False):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = 'bustd-test-%d' % os.getpid()
            sock.bind('\0' + name)
            address = '@' + name
        else:
            address = os.path.join(self.tmp, 'notify.sock')
            sock.bind(address)
        sock.settimeout(20)
        return sock, address

    def test_ready_status_and_watchdog(self):
        for abstract in (False, True):
            with self.subTest(abstract=abstract):
                sock, address = self.notify_socket(abstract)
                env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC='400000')
                d = subprocess.Popen([sys.executable, BUSTD, '-n'], env=env,
                                     stderr=subprocess.DEVNULL)
                self.addCleanup(stop, d)
                first = sock.recv(4096).decode()
                self.assertIn('READY=1', first)
                self.assertIn('STATUS=watching: SIGTERM at mem <=', first)
                self.assertIn('MAINPID=%d' % d.pid, first)
                pings = [sock.recv(4096).decode() for _ in range(3)]
                self.assertEqual(pings, ['WATCHDOG=1'] * 3)
                d.terminate()
                self.assertEqual(d.wait(10), 0)

    def test_no_socket_no_fuss(self):
        sm = bustd.ServiceManager({})
        self.assertFalse(sm.notify('READY=1'))
        sm.ping()
        self.assertEqual(sm.max_sleep_s(), bustd.POLL_CEILING_S)

    def test_watchdog_for_another_pid_is_ignored(self):
        sm = bustd.ServiceManager({'WATCHDOG_USEC': '1000000', 'WATCHDOG_PID': '1'})
        self.assertIsNone(sm.watchdog_s)
        sm = bustd.ServiceManager({'WATCHDOG_USEC': '1000000', 'WATCHDOG_PID': str(os.getpid())})
        self.assertEqual(sm.watchdog_s, 1.0)
        self.assertEqual(sm.max_sleep_s(), 0.25)


class LoggingTest(TempDirTest):
    def run_with_stderr_file(self, journal):
        path = os.path.join(self.tmp, 'stderr')
        with open(path, 'w') as err:
            st = os.fstat(err.fileno())
            env = dict(os.environ)
            env.pop('JOURNAL_STREAM', None)
            if journal:
                env['JOURNAL_STREAM'] = '%d:%d' % (st.st_dev, st.st_ino)
            d = subprocess.Popen([sys.executable, BUSTD, '-n', '--proc', self.proc.root],
                                 env=env, stderr=err)
            self.addCleanup(stop, d)
            wait_until(lambda: 'ready: watching' in read_text(path))
            d.terminate()
            self.assertEqual(d.wait(10), 0)
        with open(path) as f:
            return f.read().split('\n')

    def test_journal_prefixes_when_stderr_is_the_journal(self):
        lines = [l for l in self.run_with_stderr_file(journal=True) if l]
        self.assertTrue(all(l[:3] in ('<3>', '<4>', '<6>', '<7>') for l in lines), lines)
        self.assertTrue(any(l.startswith('<6>ready: watching') for l in lines), lines)
        self.assertTrue(any(l.startswith('<4>') for l in lines), lines)   # e.g. no oom_score_adj

    def test_plain_prefixes_on_a_terminal_or_file(self):
        lines = [l for l in self.run_with_stderr_file(journal=False) if l]
        self.assertTrue(all(l.startswith('bustd: ') for l in lines), lines)
        self.assertFalse(any(l.startswith('<') for l in lines))

    def test_journal_stream_of_another_file_is_not_the_journal(self):
        self.assertFalse(bustd.is_journal_stream(2, {'JOURNAL_STREAM': '1:1'}))
        self.assertFalse(bustd.is_journal_stream(2, {'JOURNAL_STREAM': 'junk'}))

    def test_sighup_reopens_a_moved_log_file_and_sigusr1_logs_a_status(self):
        logfile = os.path.join(self.tmp, 'bustd.log')
        self.proc.add(11, name='hog', oom_score=800)
        d = subprocess.Popen([sys.executable, BUSTD, '-n', '--log-file', logfile,
                              '--proc', self.proc.root])
        self.addCleanup(stop, d)
        self.assertTrue(wait_until(lambda: os.path.exists(logfile) and
                                   'ready: watching' in read_text(logfile)))
        os.rename(logfile, logfile + '.1')
        d.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: os.path.exists(logfile)))
        d.send_signal(signal.SIGUSR1)
        self.assertTrue(wait_until(lambda: 'status: ' in read_text(logfile)))
        d.terminate()
        self.assertEqual(d.wait(10), 0)
        new = read_text(logfile)
        self.assertIn('SIGHUP: reopened the log (%s)' % logfile, new)
        self.assertIn('status: mem avail: 6.0 GiB of 8.0 GiB (75.0%)', new)
        self.assertIn('status: kills so far: 0', new)
        self.assertRegex(new, r'status: +11 \S+ +hog +800 .*<- victim')
        self.assertNotIn('status:', read_text(logfile + '.1'))
        self.assertRegex(new.split('\n')[0], r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d bustd\[%d\]: '
                         % d.pid)

    def test_syslog_sink_writes_rfc3164_datagrams(self):
        path = os.path.join(self.tmp, 'log.sock')
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        self.addCleanup(sock.close)
        sink = bustd.SyslogSink(path)
        self.addCleanup(sink.reopen)
        sink.write(4, 'kill: SIGTERM pid=1')
        self.assertEqual(sock.recv(4096).decode(),
                         '<28>bustd[%d]: kill: SIGTERM pid=1' % os.getpid())
        sink.write(6, 'dropped: nobody listens')      # never raises, never blocks
        sock.recv(4096)


class NoCtypesTest(TempDirTest):
    def test_decides_and_kills_without_ctypes(self):
        child = start_victim()
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        shim = ("import sys; sys.modules['ctypes'] = None; p = sys.argv[1]; "
                "g = {'__name__': 'bustd_noctypes', '__file__': p}; "
                "exec(compile(open(p).read(), p, 'exec'), g); "
                "sys.exit(g['main'](sys.argv[2:]))")
        d = subprocess.Popen([sys.executable, '-c', shim, BUSTD, '-n', '--proc', self.proc.root],
                             stderr=subprocess.PIPE, universal_newlines=True)
        self.addCleanup(stop, d)
        wait_until(lambda: child.poll() is not None or d.poll() is not None, 30)
        self.assertEqual(child.poll(), -signal.SIGTERM, d.poll())
        d.terminate()
        _, err = d.communicate(timeout=10)
        self.assertEqual(d.returncode, 0, err)
        self.assertIn('running without ctypes (no sysinfo, mlockall, process_mrelease)', err)
        self.assertIn('kill: SIGTERM pid=%d' % child.pid, err)
        self.assertIn('exited: pid=%d' % child.pid, err)
        self.assertEqual(err.count('ctypes (no sysinfo'), 1)      # one warning


# ----------------------------------------------------------------------------
# Notifications and hooks (issue 6): fake buses, fake notify-send, fake hooks
# ----------------------------------------------------------------------------

RECORDER = """#!/bin/sh
# Records how it was called, for the test that wrote it.
PATH=/usr/bin:/bin; export PATH
out="%(out)s/$(basename "$0").$$"
{
  echo "uid=$(id -u) gid=$(id -g)"
  echo "bus=$DBUS_SESSION_BUS_ADDRESS"
  env | grep '^BUSTD_' | sort
  for a in "$@"; do echo "arg=$a"; done
} > "$out.tmp" && mv "$out.tmp" "$out"
echo "said hello on stdout"
%(tail)s
"""


class HelpersTest(TempDirTest):
    def setUp(self):
        TempDirTest.setUp(self)
        os.chmod(self.tmp, 0o755)      # helpers may run as another user
        self.bin = os.path.join(self.tmp, 'bin')
        self.out = os.path.join(self.tmp, 'out')
        os.makedirs(self.bin)
        os.makedirs(self.out)
        os.chmod(self.out, 0o777)
        self.run_root = os.path.join(self.tmp, 'run')
        self.log, self.sink = make_log()

    def script(self, name, tail='exit 0'):
        path = os.path.join(self.bin, name)
        with open(path, 'w') as f:
            f.write(RECORDER % {'out': self.out, 'tail': tail})
        os.chmod(path, 0o755)
        return path

    def records(self, name):
        found = []
        for entry in sorted(os.listdir(self.out)):
            if entry.startswith(name + '.') and not entry.endswith('.tmp'):
                with open(os.path.join(self.out, entry)) as f:
                    found.append(f.read().split('\n'))
        return found

    def bus(self, uid, real=True):
        d = os.path.join(self.run_root, 'user', str(uid))
        os.makedirs(d)
        path = os.path.join(d, 'bus')
        if real:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            self.addCleanup(sock.close)
        else:
            open(path, 'w').close()
        return path

    def notifier(self, **kw):
        kw.setdefault('run_root', self.run_root)
        s = bustd.Settings(**kw)
        helpers = bustd.Helpers(self.log)
        env = {'PATH': self.bin}
        return bustd.Notifier(s, helpers, self.log, environ=env), helpers

    def finish(self, helpers, timeout=10):
        self.assertTrue(wait_until(lambda: helpers.poll() or not helpers.running, timeout))

    def victim_fields(self):
        p = bustd.Process()
        p.pid, p.name, p.uid, p.rss_kib, p.cmdline = 4242, 'firefox', 1000, 3 * GIB + 200 * MIB, \
            'firefox -P work'
        return bustd.victim_fields(p, signal.SIGTERM, reading(8 * GIB, 330 * MIB),
                                   lambda uid: 'alice')

    def assert_no_zombie_children(self):
        for pid in bustd.iter_pids('/proc'):
            st = bustd.parse_stat(bustd.read_small('/proc/%d/stat' % pid) or b'')
            if st and st.ppid == os.getpid():
                self.assertNotIn(st.state, ('Z',), 'zombie child %d %s' % (pid, st.name))

    def test_session_buses(self):
        alice = self.bus(1000)
        self.bus(1001, real=False)                  # not a socket
        os.makedirs(os.path.join(self.run_root, 'user', 'abc'))
        self.assertEqual(bustd.session_buses(self.run_root), [(1000, alice)])
        self.assertEqual(bustd.session_buses(os.path.join(self.tmp, 'none')), [])

    def test_notify_send_runs_as_each_user_with_their_bus(self):
        self.script('notify-send')
        alice = self.bus(1000)
        bob = self.bus(1001)
        notifier, helpers = self.notifier(notify=True)
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        records = self.records('notify-send')
        self.assertEqual(len(records), 2)
        users = sorted((r[0], r[1]) for r in records)
        self.assertEqual(users, [('uid=1000 gid=1000', 'bus=unix:path=' + alice),
                                 ('uid=1001 gid=1001', 'bus=unix:path=' + bob)])
        args = records[0]
        self.assertIn('arg=bustd: low memory', args)
        self.assertIn('arg=bustd: killed firefox (pid 4242) to free 3.2 GiB; memory was at 4.0%',
                      args)
        self.assertIn('notify 1000 (pid', self.sink.text())
        self.assertIn('output: said hello on stdout', self.sink.text())
        self.assert_no_zombie_children()

    def test_custom_templates(self):
        self.script('notify-send')
        self.bus(1000)
        notifier, helpers = self.notifier(notify=True, notify_title='{user}: {name} got {signal}',
                                          notify_body='{rss} {uid} {cmdline} {mem_percent}')
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        args = self.records('notify-send')[0]
        self.assertIn('arg=alice: firefox got SIGTERM', args)
        self.assertIn('arg=3.2 GiB 1000 firefox -P work 4.0', args)

    def test_falls_back_to_gdbus_then_dbus_send(self):
        self.bus(1000)
        self.script('dbus-send')
        notifier, helpers = self.notifier(notify=True)
        self.assertTrue(notifier.program.endswith('dbus-send'))
        self.script('gdbus')
        notifier, helpers = self.notifier(notify=True)
        self.assertTrue(notifier.program.endswith('gdbus'))
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        args = self.records('gdbus')[0]
        self.assertIn('arg=org.freedesktop.Notifications.Notify', args)
        self.assertIn('arg=--session', args)

    def test_no_notifier_is_one_warning(self):
        self.bus(1000)
        notifier, helpers = self.notifier(notify=True)
        self.assertIsNone(notifier.program)
        self.assertEqual(self.sink.text().count('desktop notifications are off'), 1)
        notifier.after_kill(self.victim_fields())
        self.assertEqual(helpers.running, {})

    def test_after_hook_gets_the_facts(self):
        hook = self.script('after-hook')
        notifier, helpers = self.notifier(exec_after=hook)
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        record = self.records('after-hook')[0]
        for line in ('BUSTD_PID=4242', 'BUSTD_NAME=firefox', 'BUSTD_UID=1000',
                     'BUSTD_CMDLINE=firefox -P work', 'BUSTD_RSS_KIB=%d' % (3 * GIB + 200 * MIB),
                     'BUSTD_SIGNAL=SIGTERM', 'BUSTD_MEM_AVAILABLE_PERCENT=4.0'):
            self.assertIn(line, record)
        self.assertIn('-N hook (pid', self.sink.text())
        self.assertIn(': exit 0', self.sink.text())

    def test_failing_hook_costs_one_log_line(self):
        hook = self.script('after-hook', tail='exit 3')
        notifier, helpers = self.notifier(exec_after=hook)
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        self.assertEqual(self.sink.text().count('exit 3'), 1)

    def test_hanging_helper_is_killed_after_its_timeout_and_reaped(self):
        hook = self.script('after-hook', tail='exec sleep 1000')
        helpers = bustd.Helpers(self.log, timeout_s=0.3)
        pids = helpers.start_batch([bustd.Command([hook], {'PATH': '/usr/bin:/bin'}, 'hook')])
        self.assertEqual(len(pids), 1)
        self.assertTrue(alive(pids[0]))
        self.finish(helpers, timeout=5)
        self.assertFalse(os.path.exists('/proc/%d' % pids[0]))      # killed and reaped
        self.assertIn('killed after its 0.3 s timeout', self.sink.text())
        self.assert_no_zombie_children()

    def test_a_helper_that_cannot_die_does_not_block_the_loop(self):
        """Like one in uninterruptible sleep: frozen (cgroup v1 freezer), SIGKILL waits."""
        freezer = '/sys/fs/cgroup/freezer'
        if os.geteuid() != 0 or not os.path.exists(freezer + '/cgroup.procs'):
            self.skipTest('needs root and the cgroup v1 freezer to hold a process unkillable')
        cg = tempfile.mkdtemp(prefix='bustd-test-', dir=freezer)
        def thaw_and_remove():
            with open(cg + '/freezer.state', 'w') as f:
                f.write('THAWED')
            wait_until(lambda: not read_text(cg + '/cgroup.procs'))
            os.rmdir(cg)
        self.addCleanup(thaw_and_remove)
        hook = self.script('after-hook', tail='exec sleep 1000')
        helpers = bustd.Helpers(self.log, timeout_s=5)
        pid = helpers.start_batch([bustd.Command([hook], {}, 'frozen')])[0]
        with open(cg + '/cgroup.procs', 'w') as f:
            f.write(str(pid))
        with open(cg + '/freezer.state', 'w') as f:
            f.write('FROZEN')
        self.assertTrue(wait_until(lambda: 'FROZEN' in read_text(cg + '/freezer.state')))
        helpers.kill([pid])                  # returns although it cannot die yet
        self.assertIn(pid, helpers.running)
        self.assertTrue(alive(pid))
        with open(cg + '/freezer.state', 'w') as f:
            f.write('THAWED')
        self.finish(helpers)                         # reaped on a later poll
        self.assertFalse(os.path.exists('/proc/%d' % pid))
        self.assertIn('frozen (pid %d): killed after its 5.0 s timeout' % pid, self.sink.text())

    def test_failed_fork_leaks_no_fd(self):
        from unittest import mock
        helpers = bustd.Helpers(self.log)
        before = len(os.listdir('/proc/self/fd'))
        with mock.patch.object(bustd.os, 'fork', side_effect=OSError(errno.EAGAIN, 'no')):
            for _ in range(20):
                self.assertEqual(helpers.start_batch([bustd.Command(['/bin/true'], {}, 'x')]),
                                 [])
        self.assertEqual(len(os.listdir('/proc/self/fd')), before)
        self.assertIn('cannot start x: no', self.sink.text())

    def test_one_batch_at_a_time(self):
        hook = self.script('after-hook', tail='exec sleep 1000')
        helpers = bustd.Helpers(self.log, timeout_s=5)
        first = helpers.start_batch([bustd.Command([hook], {}, 'first')])
        second = helpers.start_batch([bustd.Command([hook], {}, 'second')])
        self.assertEqual(len(first), 1)
        self.assertEqual(second, [])
        self.assertIn('helpers still running (first): not starting second', self.sink.text())
        helpers.kill(first)
        self.assertEqual(helpers.running, {})

    def test_missing_program_costs_one_log_line(self):
        helpers = bustd.Helpers(self.log)
        helpers.start_batch([bustd.Command(['/nonexistent/prog'], {}, 'ghost')])
        self.finish(helpers)
        self.assertIn('ghost (pid', self.sink.text())
        self.assertIn('exit 127', self.sink.text())

    def test_before_hook_budget(self):
        cases = [('exit 0', False), ('exec sleep 1000', True)]
        for tail, overran in cases:
            with self.subTest(tail=tail):
                hook = self.script('before-hook', tail=tail)
                notifier, helpers = self.notifier(exec_before=hook, before_budget_s=0.5)
                start = time.monotonic()
                notifier.before_kill(self.victim_fields(), interrupt=lambda: False)
                self.assertEqual(helpers.running, {})   # finished, or killed at the budget
                self.assertEqual('still running after 0.5 s' in self.sink.text(), overran)
                if overran:
                    self.assertGreaterEqual(time.monotonic() - start, 0.5)
        self.assert_no_zombie_children()

    def test_before_hook_is_cut_short_when_memory_reaches_the_kill_level(self):
        hook = self.script('before-hook', tail='exec sleep 1000')
        notifier, helpers = self.notifier(exec_before=hook, before_budget_s=30)
        notifier.before_kill(self.victim_fields(), interrupt=lambda: True)
        self.assertEqual(helpers.running, {})
        self.assertIn('killing it; the kill goes ahead', self.sink.text())

    def test_warn_is_rate_limited(self):
        self.script('notify-send')
        self.bus(1000)
        notifier, helpers = self.notifier(notify=True, warn_percent=20)
        r = reading(8 * GIB, GIB)
        self.assertTrue(notifier.warn_low(r, 1000.0))
        self.assertFalse(notifier.warn_low(r, 1000.0 + bustd.WARN_EVERY_S - 1))
        self.finish(helpers)
        self.assertTrue(notifier.warn_low(r, 1000.0 + bustd.WARN_EVERY_S))
        self.finish(helpers)
        self.assertEqual(self.sink.text().count('memory low: 12.5% available (--warn 20%)'), 2)
        args = self.records('notify-send')[0]
        self.assertIn('arg=bustd: memory is low', args)
        self.assertIn('arg=Only 12.5% of memory is available: save your work.', args)

    def test_waiter_drops_an_fd_in_error(self):
        import select
        waiter = bustd.Waiter()
        r, w = os.pipe()
        os.close(r)                   # the write end now polls POLLERR for ever
        self.addCleanup(os.close, w)
        waiter.add(w, select.POLLPRI, 'broken', drain=False)
        waiter(0.5)
        self.assertEqual(waiter.woken_by, 'broken')
        waiter(0.05)
        self.assertIsNone(waiter.woken_by)       # unregistered: a plain sleep again

    def far_waiter(self):
        """A Waiter whose far() waits for SIGUSR1; the test's own handler counts it."""
        got = []
        old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
        self.addCleanup(signal.signal, signal.SIGUSR1, old)
        waiter = bustd.Waiter()
        waiter.watch_signals_far((signal.SIGUSR1,))
        if waiter.far_signals is None:
            self.skipTest('no sigtimedwait here')
        return waiter, got

    def test_far_sleep_ends_on_a_signal_and_its_handler_still_runs(self):
        waiter, got = self.far_waiter()
        timer = threading.Timer(0.1, signal.pthread_kill,
                                (threading.main_thread().ident, signal.SIGUSR1))
        timer.start()
        self.addCleanup(timer.join)
        started = time.monotonic()
        self.assertTrue(waiter.far(5.0))
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(got, [])                          # held until release()
        self.assertIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))
        waiter.release()
        self.assertTrue(wait_until(lambda: got == [signal.SIGUSR1], 2))
        self.assertNotIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def test_far_sleep_sleeps_its_time_and_leaves_signals_unblocked(self):
        waiter, got = self.far_waiter()
        started = time.monotonic()
        self.assertFalse(waiter.far(0.05))
        self.assertFalse(waiter.far(0.05))
        self.assertGreaterEqual(time.monotonic() - started, 0.1)
        waiter.release()
        self.assertEqual(got, [])
        self.assertNotIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def test_far_sleep_polls_when_an_event_fd_matters_there(self):
        import select
        waiter, got = self.far_waiter()
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        waiter.add(r, select.POLLIN, 'cgroup threshold', far=True)
        os.write(w, b'x')
        started = time.monotonic()
        self.assertFalse(waiter.far(5.0))
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(waiter.woken_by, 'cgroup threshold')
        self.assertNotIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def test_render_leaves_unknown_fields(self):
        self.assertEqual(bustd.render('{name} {nope}', {'name': 'x'}), 'x {nope}')


class HooksInTheLoopTest(TempDirTest):
    """A hanging -N hook never delays the next kill; -P may make the kill unnecessary."""

    def test_no_kill_if_memory_recovered_while_the_before_hook_ran(self):
        hook = os.path.join(self.tmp, 'free-some-memory')
        with open(hook, 'w') as f:       # the admin's hook frees memory (here: the fake one)
            f.write('#!/usr/bin/env python3\nimport sys\nsys.path.insert(0, %r)\n'
                    'import test_bustd\nproc = test_bustd.FakeProc(%r)\n'
                    'proc.meminfo(total_kib=8 << 20, avail_kib=6 << 20)\n'
                    % (HERE, self.proc.root))
        os.chmod(hook, 0o755)
        child = start_victim()
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log()
        s = settings(self.proc, exec_before=hook)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        helpers = bustd.Helpers(log)
        d = bustd.Daemon(s, sensor, bustd.Policy(s), bustd.load_kernel_calls(), log,
                         bustd.Notifier(s, helpers, log), helpers)
        d.start()
        d.step()
        self.assertIsNone(child.poll())
        self.assertIn('memory recovered while the -P hook ran', sink.text())
        self.assertNotIn('kill: SIGTERM', sink.text())

    def test_daemon_keeps_killing_while_a_hook_hangs(self):
        hook = os.path.join(self.tmp, 'hang')
        with open(hook, 'w') as f:
            f.write('#!/bin/sh\nexec sleep 1000\n')
        os.chmod(hook, 0o755)
        first, second = start_victim(), start_victim()
        for child in (first, second):
            self.addCleanup(stop, child)
            self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log()
        s = settings(self.proc, exec_after=hook)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        helpers = bustd.Helpers(log, timeout_s=60)
        self.addCleanup(lambda: helpers.kill(list(helpers.running)))
        d = bustd.Daemon(s, sensor, bustd.Policy(s), bustd.load_kernel_calls(), log,
                         bustd.Notifier(s, helpers, log), helpers)
        d.start()
        d.step()
        hook_pids = list(helpers.running)
        self.assertEqual(len(hook_pids), 1)
        d.step()                                    # the second victim, hook still hanging
        self.assertTrue(alive(hook_pids[0]))
        self.assertEqual(sorted(-reap(c) for c in (first, second)), [signal.SIGTERM] * 2)
        self.assertEqual(sink.text().count('exited: pid='), 2)
        self.assertIn('helpers still running (-N hook): not starting -N hook', sink.text())


if __name__ == '__main__':
    unittest.main()
