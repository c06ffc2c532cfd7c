//go:build unix

package frames

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// rawIO says whether sockets are read and written directly here.
const rawIO = true

// readReady is ReadReady for a socket.
func (r *Reader) readReady() error {
	r.compact()
	r.rawRes = 0
	if err := r.raw.Read(r.rawFn); err != nil {
		r.Release()
		return err
	}
	var err error
	switch r.rawRes {
	case 0:
		return nil
	case rawAgain:
		err = ErrWouldBlock
	case rawEOF:
		err = io.EOF
	default:
		err = os.NewSyscallError("read", syscall.Errno(r.rawRes))
	}
	r.Release()
	return err
}

// Results of readFd besides bytes read and errno values.
const (
	rawAgain = -1
	rawEOF   = -2
)

// readFd reads once into the free part of the pooled buffer, which compact
// put after the buffered bytes. It never asks the runtime to wait.
func (r *Reader) readFd(fd uintptr) bool {
	buf := *r.big
	m := len(r.data)
	for {
		n, err := readNonblock(fd, buf[m:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			r.rawRes = rawAgain
		case err != nil:
			r.rawRes = int32(err.(syscall.Errno))
		case n == 0:
			r.rawRes = rawEOF
		default:
			r.data = buf[:m+n]
			r.short = n < len(buf)-m
			r.got.Add(int64(n))
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

// RawWriter writes to a socket without waiting and without telling the
// scheduler about a system call (see readNonblock). Make it with
// NewRawWriter; it is used by one goroutine at a time.
type RawWriter struct {
	p   []byte
	n   int
	err error
	fn  func(uintptr) bool // w.writeFd, made once: a closure per write would allocate
}

// NewRawWriter returns a RawWriter.
func NewRawWriter() *RawWriter {
	w := &RawWriter{}
	w.fn = w.writeFd
	return w
}

// WriteReady writes as much of p to the socket of rc as its buffer takes
// now and returns how much that was: less than len(p) means the socket's
// buffer is full, and the caller waits (with a blocking write) for the rest.
func (w *RawWriter) WriteReady(rc syscall.RawConn, p []byte) (int, error) {
	w.p, w.n, w.err = p, 0, nil
	err := rc.Write(w.fn)
	w.p = nil
	if err != nil {
		return w.n, err
	}
	return w.n, w.err
}

func (w *RawWriter) writeFd(fd uintptr) bool {
	for w.n < len(w.p) {
		rest := w.p[w.n:]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)))
		switch e {
		case 0:
			w.n += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true
		default:
			w.err = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}
