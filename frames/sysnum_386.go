//go:build linux && 386

package frames

import "syscall"

// On linux/386 the socket calls go through socketcall(2), which the
// syscall package does not number: sockets are read and written plainly.
const (
	sysRecvfrom = syscall.SYS_READ
	sysSendto   = syscall.SYS_WRITE
)
