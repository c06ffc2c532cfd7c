//go:build unix && !(linux && 386)

package frames

import "syscall"

// The system calls that read and write a socket (see readNonblock).
const (
	sysRecvfrom = syscall.SYS_RECVFROM
	sysSendto   = syscall.SYS_SENDTO
)
