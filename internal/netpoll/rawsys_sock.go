//go:build linux && !386 && !s390x

package netpoll

import (
	"net/netip"
	"syscall"
	"unsafe"
)

// The socket calls of a connection's life (accept, connect, its options,
// shutdown, close) on non-blocking sockets, made without telling the
// scheduler (RawSyscall), as the relay's reads and writes are: none of
// them waits (close(2) would, on a socket with SO_LINGER and a timeout,
// which the gate never sets: its listener is its own). Made through syscall's own wrappers, each one marked its
// processor as in a system call; on loopback connect(2) and shutdown(2)
// run the peer's side of the TCP exchange inline and outlast the
// runtime monitor's 20 µs tick, so the monitor kept retaking processors
// from them (handing them to other threads) and polled at its shortest
// period: at a few thousand handshakes a second, a tenth of the gate's
// CPU.

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func sysClose(fd int) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
	return errnoErr(e)
}

func sysShutdown(fd, how int) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}

func sysSetsockoptInt(fd, level, opt, v int) error {
	iv := int32(v)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&iv)), 4, 0)
	return errnoErr(e)
}

func sysGetsockoptInt(fd, level, opt int) (int, error) {
	var iv int32
	n := uint32(4)
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&iv)), uintptr(unsafe.Pointer(&n)), 0)
	return int(iv), errnoErr(e)
}

// sysConnect starts connecting fd to ap (an address without a zone).
func sysConnect(fd int, ap netip.AddrPort) error {
	port := ap.Port()
	var e syscall.Errno
	if ip := ap.Addr(); ip.Is4() {
		sa := syscall.RawSockaddrInet4{Family: syscall.AF_INET, Addr: ip.As4()}
		*(*[2]byte)(unsafe.Pointer(&sa.Port)) = [2]byte{byte(port >> 8), byte(port)}
		_, _, e = syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), syscall.SizeofSockaddrInet4)
	} else {
		sa := syscall.RawSockaddrInet6{Family: syscall.AF_INET6, Addr: ip.As16()}
		*(*[2]byte)(unsafe.Pointer(&sa.Port)) = [2]byte{byte(port >> 8), byte(port)}
		_, _, e = syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), syscall.SizeofSockaddrInet6)
	}
	return errnoErr(e)
}

// sysAccept takes a connection from the listening socket fd, non-blocking
// and close-on-exec, with its peer's address (an IPv4 peer of an IPv6
// socket as IPv4).
func sysAccept(fd int) (int, netip.AddrPort, error) {
	var rsa syscall.RawSockaddrAny
	n := uint32(syscall.SizeofSockaddrAny)
	r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)),
		uintptr(unsafe.Pointer(&n)), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	var ap netip.AddrPort
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		sa := (*syscall.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		ap = peerAddr(netip.AddrFrom4(sa.Addr), uint16(p[0])<<8|uint16(p[1]), 0)
	case syscall.AF_INET6:
		sa := (*syscall.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		ap = peerAddr(netip.AddrFrom16(sa.Addr), uint16(p[0])<<8|uint16(p[1]), sa.Scope_id)
	}
	return int(r), ap, nil
}
