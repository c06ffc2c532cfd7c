//go:build unix

package frames

import (
	"io"
	"os"
	"syscall"
)

// rawReads says whether readRaw works here.
const rawReads = true

// readRaw waits, holding no buffer, until the socket is readable (in the
// runtime's poller, under the connection's read deadline), then reads what
// it has into a pooled buffer. It is what the socket's own Read does, with
// the buffer taken after the wait instead of before it.
func (r *Reader) readRaw() error {
	r.rawErr = nil
	if err := r.raw.Read(r.rawFn); err != nil {
		return err
	}
	return r.rawErr
}

// readFd is readRaw's attempt at a read; false means "wait for readiness".
func (r *Reader) readFd(fd uintptr) bool {
	buf := getBuf()
	for {
		n, err := syscall.Read(int(fd), *buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			putBuf(buf)
			return false
		case err != nil:
			putBuf(buf)
			r.rawErr = os.NewSyscallError("read", err)
		case n == 0:
			putBuf(buf)
			r.rawErr = io.EOF
		default:
			r.big = buf
			r.data = (*buf)[:n]
		}
		return true
	}
}
