package limit

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const redisServerBin = "/usr/bin/redis-server"

// redisServer is a real redis-server started by a test on a free port.
type redisServer struct {
	tb   testing.TB
	port int
	args []string
	cmd  *exec.Cmd
}

// startRedis starts redis-server on a free port with persistence off and
// stops it in tb.Cleanup. It skips the test when redis-server is missing.
func startRedis(tb testing.TB, extra ...string) *redisServer {
	tb.Helper()
	if _, err := os.Stat(redisServerBin); err != nil {
		tb.Skipf("no %s: %v", redisServerBin, err)
	}
	s := &redisServer{tb: tb, port: freePort(tb), args: extra}
	s.start()
	tb.Cleanup(s.stop)
	return s
}

func (s *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }
func (s *redisServer) url() string  { return "redis://" + s.addr() }

func (s *redisServer) start() {
	s.tb.Helper()
	args := append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.tb.TempDir()}, s.args...)
	s.cmd = exec.Command(redisServerBin, args...)
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	waitPing(s.tb, s.addr())
}

// stop kills the server and waits for it; it is a no-op when stopped.
func (s *redisServer) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused server cannot die
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// pause stops the process (SIGSTOP): connections stay open and calls hang,
// as with a blackholed Redis. resume undoes it.
func (s *redisServer) pause()  { _ = s.cmd.Process.Signal(syscall.SIGSTOP) }
func (s *redisServer) resume() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }

// cli runs redis-cli against the server and returns its trimmed output.
func (s *redisServer) cli(args ...string) string {
	s.tb.Helper()
	return redisCLI(s.tb, s.port, args...)
}

func redisCLI(tb testing.TB, port int, args ...string) string {
	tb.Helper()
	out, err := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(port)}, args...)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redis-cli %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// monitor records the commands a Redis serves (MONITOR through redis-cli).
type monitor struct {
	tb   testing.TB
	s    *redisServer
	cmd  *exec.Cmd
	file string
}

// startMonitor starts recording; stop returns the commands clients sent
// (upper-cased names, without the ones Lua scripts ran inside Redis, nor
// the re-reads of the operator records).
func startMonitor(tb testing.TB, s *redisServer) *monitor {
	tb.Helper()
	m := &monitor{tb: tb, s: s, file: filepath.Join(tb.TempDir(), "monitor")}
	f, err := os.Create(m.file)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	m.cmd = exec.Command("redis-cli", "-p", strconv.Itoa(s.port), "monitor")
	m.cmd.Stdout = f
	if err := m.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	m.waitFor("monitor-start")
	return m
}

// waitFor sends ECHO marker until the monitor has recorded it.
func (m *monitor) waitFor(marker string) string {
	m.tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.s.cli("echo", marker)
		b, _ := os.ReadFile(m.file)
		if strings.Contains(string(b), marker) {
			return string(b)
		}
		if time.Now().After(deadline) {
			m.tb.Fatalf("monitor never saw %s", marker)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (m *monitor) stop() []string {
	m.tb.Helper()
	out := m.waitFor("monitor-stop")
	_ = m.cmd.Process.Kill()
	_ = m.cmd.Wait()
	_, out, _ = strings.Cut(out, "monitor-start")
	var cmds []string
	for _, line := range strings.Split(out, "\n") {
		// 1732665600.123456 [0 127.0.0.1:54321] "evalsha" "..."; [0 lua] inside scripts
		_, rest, ok := strings.Cut(line, "] \"")
		if !ok || strings.Contains(line, " lua]") {
			continue
		}
		name, _, _ := strings.Cut(rest, "\"")
		name = strings.ToUpper(name)
		// HGETALL: every Limiter re-reads the operator records each
		// second (reloadRecords), whatever the test does.
		if name == "ECHO" || name == "MONITOR" || name == "HGETALL" {
			continue
		}
		cmds = append(cmds, name)
	}
	return cmds
}

// freePort returns a port free for listening, whose cluster bus port
// (port+10000) is free too.
func freePort(tb testing.TB) int {
	tb.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p+10000 > 65535 {
			continue
		}
		if bus, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+10000)); err == nil {
			bus.Close()
			return p
		}
	}
	tb.Fatal("no free port")
	return 0
}

// waitPing waits until the server at addr answers PING.
func waitPing(tb testing.TB, addr string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ping(addr) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("redis at %s does not answer PING", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	// A server with a password answers -NOAUTH: it is up all the same.
	return err == nil && (strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH"))
}

// startCluster starts a 3-master Redis Cluster, each node with the extra
// arguments, and returns its servers and a rueidis URL naming all three.
func startCluster(tb testing.TB, extra ...string) ([]*redisServer, string) {
	tb.Helper()
	dir := tb.TempDir()
	var nodes []*redisServer
	var addrs []string
	for i := range 3 {
		s := startRedis(tb, append([]string{"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", i)),
			"--cluster-node-timeout", "2000"}, extra...)...)
		nodes = append(nodes, s)
		addrs = append(addrs, s.addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v: %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		for !strings.Contains(n.cli("cluster", "info"), "cluster_state:ok") {
			if time.Now().After(deadline) {
				tb.Fatalf("cluster at %s not ok: %s", n.addr(), n.cli("cluster", "info"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nodes, "redis://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2]
}

// slotOwner returns the index in nodes of the master that serves key.
func slotOwner(tb testing.TB, nodes []*redisServer, key string) int {
	tb.Helper()
	slot, err := strconv.Atoi(nodes[0].cli("cluster", "keyslot", key))
	if err != nil {
		tb.Fatal(err)
	}
	for i, n := range nodes {
		for _, line := range strings.Split(n.cli("cluster", "nodes"), "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "myself") {
				continue
			}
			for _, r := range f[8:] {
				lo, hi, ok := strings.Cut(r, "-")
				if !ok {
					hi = lo
				}
				a, _ := strconv.Atoi(lo)
				b, _ := strconv.Atoi(hi)
				if a <= slot && slot <= b {
					return i
				}
			}
		}
	}
	tb.Fatalf("no master serves slot %d of %s", slot, key)
	return -1
}

// countCommands runs f and returns the commands Redis served meanwhile,
// without those of a connection rueidis may open (HELLO, CLIENT
// TRACKING), and how many of them were scripts.
func countCommands(t *testing.T, s *redisServer, f func()) (cmds, evals int) {
	t.Helper()
	mon := startMonitor(t, s)
	f()
	for _, c := range mon.stop() {
		if strings.HasPrefix(c, "EVAL") {
			evals++
		}
		if c != "HELLO" && c != "CLIENT" {
			cmds++
		}
	}
	return cmds, evals
}
