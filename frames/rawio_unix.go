//go:build unix

package frames

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// rawReads says whether readRaw and RawWriter work here.
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
		n, err := readNonblock(fd, *buf)
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

// readNonblock reads a non-blocking descriptor without telling the
// scheduler about a system call: the call returns at once (EAGAIN when
// nothing is there), so there is no thread to hand the processor over from,
// and entering a scheduled system call would also wake the runtime's
// monitor thread each time the gate had been idle.
func readNonblock(fd uintptr, p []byte) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// RawWriter writes whole buffers to a socket the way a Reader reads one:
// non-blocking writes without telling the scheduler about a system call
// (see readNonblock), waiting for writability in the runtime's poller, under
// the connection's write deadline, when the socket's buffer is full. Make it
// with NewRawWriter; it is used by one goroutine at a time.
type RawWriter struct {
	p   []byte
	err error
	fn  func(uintptr) bool // w.writeFd, made once: a closure per write would allocate
}

// NewRawWriter returns a RawWriter.
func NewRawWriter() *RawWriter {
	w := &RawWriter{}
	w.fn = w.writeFd
	return w
}

// Write writes all of p to the socket of rc.
func (w *RawWriter) Write(rc syscall.RawConn, p []byte) error {
	w.p, w.err = p, nil
	err := rc.Write(w.fn)
	w.p = nil
	if err != nil {
		return err
	}
	return w.err
}

func (w *RawWriter) writeFd(fd uintptr) bool {
	for len(w.p) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.p))), uintptr(len(w.p)))
		switch e {
		case 0:
			w.p = w.p[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // wait until the socket takes more
		default:
			w.err = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}
