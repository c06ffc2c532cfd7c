//go:build linux && (386 || s390x)

package netpoll

import (
	"net/netip"
	"syscall"
)

// On linux/386 and linux/s390x the syscall package makes the socket calls
// through socketcall(2) (on s390x the direct calls came with Linux 4.3):
// they are syscall's own here.

func sysClose(fd int) error                        { return syscall.Close(fd) }
func sysShutdown(fd, how int) error                { return syscall.Shutdown(fd, how) }
func sysSetsockoptInt(fd, level, opt, v int) error { return syscall.SetsockoptInt(fd, level, opt, v) }
func sysGetsockoptInt(fd, level, opt int) (int, error) {
	return syscall.GetsockoptInt(fd, level, opt)
}

func sysConnect(fd int, ap netip.AddrPort) error {
	if ip := ap.Addr(); ip.Is4() {
		return syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()})
	}
	return syscall.Connect(fd, &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
}

func sysAccept(fd int) (int, netip.AddrPort, error) {
	nfd, sa, err := syscall.Accept4(fd, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	var ap netip.AddrPort
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		ap = peerAddr(netip.AddrFrom4(sa.Addr), uint16(sa.Port), 0)
	case *syscall.SockaddrInet6:
		ap = peerAddr(netip.AddrFrom16(sa.Addr), uint16(sa.Port), sa.ZoneId)
	}
	return nfd, ap, nil
}
