package limit

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"syscall"

	wsframes "github.com/holo/wsgate/frames"
)

// dialRaw is the Redis client's dial (rueidis's DialCtxFn): rueidis's own
// dial, with a plain TCP connection's reads and writes made by rawConn.
func dialRaw(ctx context.Context, dst string, d *net.Dialer, tc *tls.Config) (net.Conn, error) {
	if tc != nil {
		td := tls.Dialer{NetDialer: d, Config: tc}
		return td.DialContext(ctx, "tcp", dst)
	}
	c, err := d.DialContext(ctx, "tcp", dst)
	if err != nil {
		return nil, err
	}
	return newRawConn(c), nil
}

// rawConn is a TCP connection to Redis whose reads and writes are system
// calls made without telling the scheduler (wsframes.ReadSocket,
// wsframes.WriteReady), inside the connection's syscall.RawConn, which keeps
// the descriptor open meanwhile and waits in Go's poller, deadlines
// included, only when the socket has nothing to read or no room. Through
// net.Conn each call entered a scheduled system call; a write on loopback,
// which runs Redis's receive inline, outlasted the runtime monitor's 20 µs
// tick, so the monitor retook processors, started threads and polled at
// its shortest period: in exact mode at 50 busy connections the monitor
// took 6% of the gate's CPU and the scheduled write and read of each
// decision 7%. Everything else is the TCP connection's.
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// newRawConn returns c as a rawConn when it is a TCP connection that hands
// out its descriptor, and c otherwise.
func newRawConn(c net.Conn) net.Conn {
	if !wsframes.RawIO {
		return c
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawConn{TCPConn: tc, rc: rc}
}

// Read reads what the socket holds, waiting while it holds nothing.
func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		n, rerr = wsframes.ReadSocket(int(fd), b)
		return rerr != wsframes.ErrWouldBlock
	})
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case rerr == io.EOF:
		return 0, io.EOF
	case rerr != nil:
		return 0, c.opError("read", rerr)
	}
	return n, nil
}

// Write writes all of b, waiting while the socket's buffer is full.
func (c *rawConn) Write(b []byte) (int, error) {
	done := 0
	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		var n int
		n, werr = wsframes.WriteReady(int(fd), b[done:])
		done += n
		return werr != nil || done == len(b)
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return done, c.opError("write", err)
	}
	return done, nil
}

func (c *rawConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err // RawConn's, as "raw-read" or "raw-write"
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
