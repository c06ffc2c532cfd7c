package proxy

import (
	"errors"
	"sync"
	"syscall"
)

// poller parks idle relay directions: instead of a goroutine blocked in
// Read for every idle connection (two per pair, each with its stack), the
// direction's socket waits in an epoll set and a goroutine is started only
// when bytes arrive. This is the "readiness, then read" design of gobwas'
// "million WebSockets with Go"; it is what keeps an idle pair at a couple of
// kilobytes. Registrations are one-shot: a direction is handed back exactly
// once per park, to whichever of the epoll loop or wake (pair.end) claims it
// first.
type poller struct {
	epfd   int
	wakeFd [2]int // a pipe whose read end in the set stops loop
	mu     sync.Mutex
	dirs   map[uint64]*direction
	nextID uint64
	done   chan struct{}
}

func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	pl := &poller{epfd: epfd, dirs: make(map[uint64]*direction), done: make(chan struct{})}
	if err := syscall.Pipe2(pl.wakeFd[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	// id 0 is the stop pipe.
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pl.wakeFd[0], &ev); err != nil {
		pl.closeFds()
		return nil, err
	}
	go pl.loop()
	return pl, nil
}

func (pl *poller) closeFds() {
	syscall.Close(pl.epfd)
	syscall.Close(pl.wakeFd[0])
	syscall.Close(pl.wakeFd[1])
}

// close stops the loop and waits for it.
func (pl *poller) close() {
	_, _ = syscall.Write(pl.wakeFd[1], []byte{0})
	<-pl.done
	pl.closeFds()
}

// park registers d's source for one readiness event. The caller has set
// d.state to parked already.
func (pl *poller) park(d *direction) error {
	if d.fd < 0 {
		return errNoFd
	}
	op := syscall.EPOLL_CTL_MOD
	pl.mu.Lock()
	if d.id == 0 {
		pl.nextID++
		d.id = pl.nextID
		pl.dirs[d.id] = d
		op = syscall.EPOLL_CTL_ADD
	}
	id := d.id
	pl.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	putID(&ev, id)
	return syscall.EpollCtl(pl.epfd, op, int(d.fd), &ev)
}

// forget removes d from the set; called before its socket is closed, so
// that a reused descriptor number can never reach d.
func (pl *poller) forget(d *direction) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if d.id == 0 {
		return
	}
	delete(pl.dirs, d.id)
	d.id = 0
	_ = syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_DEL, int(d.fd), nil)
}

var errNoFd = errors.New("proxy: connection has no descriptor to poll")

func (pl *poller) loop() {
	defer close(pl.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(pl.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return
		}
		for i := range events[:n] {
			id := getID(&events[i])
			if id == 0 {
				return
			}
			pl.mu.Lock()
			d := pl.dirs[id]
			pl.mu.Unlock()
			if d != nil {
				d.pair.wake(d)
			}
		}
	}
}

// putID and getID keep a 64-bit id in the event's data (Fd and Pad).
func putID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd = int32(id)
	ev.Pad = int32(id >> 32)
}

func getID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// connFd returns the descriptor of a TCP connection, or -1.
func connFd(c any) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	_ = rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}
