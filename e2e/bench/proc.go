package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. It is 100 on every
// Linux architecture Go supports; the kernel keeps it fixed for user space.
const clockTicks = 100

// procs owns every process the harness starts, so that one call ends them all, on success,
// on error and on SIGINT/SIGTERM.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

// proc is one started process. Its output goes to a file in the run's temp dir.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once cmd.Wait returned
}

// start runs argv as its own process group (nginx's workers join the master's group), output
// to logPath.
func (ps *procs) start(name, logPath string, argv []string) (*proc, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = out
	cmd.Stderr = out
	// Pdeathsig is a backstop for a harness killed with SIGKILL; the normal path is stopAll.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	go func() {
		defer close(p.done)
		_ = cmd.Wait()
		out.Close()
	}()
	return p, nil
}

// stopAll kills every started process group with SIGKILL and waits for each (bounded).
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	for _, p := range list {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	for _, p := range list {
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			fmt.Fprintf(os.Stderr, "bench: %s (pid %d) did not exit after SIGKILL\n", p.name, p.cmd.Process.Pid)
		}
	}
}

// stop ends one started process group with SIGKILL, unless it has exited already, waits for
// it (bounded) and forgets it, so that stopAll does not signal a process group id that may have
// been reused.
func (ps *procs) stop(p *proc) {
	ps.mu.Lock()
	ps.list = slices.DeleteFunc(ps.list, func(q *proc) bool { return q == p })
	ps.mu.Unlock()
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		fmt.Fprintf(os.Stderr, "bench: %s (pid %d) did not exit after SIGKILL\n", p.name, p.cmd.Process.Pid)
	}
}

// exitCode is the process's exit status once it has exited, -1 when a signal ended it.
func (p *proc) exitCode() int {
	<-p.done
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail returns the last n bytes of the process's output, for error messages.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// tree returns pid and its live descendants (nginx: the master and its workers).
func tree(pid int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(p)
		if err != nil || len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[p] = pp
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		for p, pp := range parent {
			if pp == out[i] {
				out = append(out, p)
			}
		}
	}
	return out
}

// statFields returns the fields of /proc/<pid>/stat after the command name: index 0 is
// field 3 (state), so utime (field 14) is index 11.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	return strings.Fields(string(b[i+1:])), nil
}

// cpuTicks sums utime+stime over pids, in clock ticks. withChildren adds cutime+cstime (the
// CPU of waited-for children, such as `go build`).
func cpuTicks(pids []int, withChildren bool) int64 {
	var sum int64
	for _, pid := range pids {
		f, err := statFields(pid)
		if err != nil || len(f) < 15 {
			continue
		}
		last := 12
		if withChildren {
			last = 14
		}
		for i := 11; i <= last; i++ {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			sum += v
		}
	}
	return sum
}

// rssKiB sums VmRSS over pids.
func rssKiB(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				sum += n
			}
		}
	}
	return sum
}

// othersTicks sums utime+stime+cutime+cstime over the user-space processes outside this
// process's tree. Reaped children's time moves into their parent's cutime, so the difference of
// two readings also covers the processes that started and ended in between. Kernel threads
// (ksoftirqd among them, which does loopback networking for everyone) are left out.
func othersTicks() int64 {
	own := map[int]bool{}
	for _, p := range tree(os.Getpid()) {
		own[p] = true
	}
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || own[p] || p == 2 {
			continue
		}
		if f, err := statFields(p); err == nil && len(f) > 1 && f[1] == "2" {
			continue
		}
		pids = append(pids, p)
	}
	return cpuTicks(pids, true)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitTCP polls addr until it accepts a connection, p exits, or limit passes.
func waitTCP(p *proc, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, p.logTail(2000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %v: %s", p.name, addr, limit, p.logTail(2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
