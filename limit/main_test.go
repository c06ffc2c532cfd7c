package limit

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// After a Cluster topology refresh, rueidis closes the replaced
		// connections from a goroutine that sleeps 5s first (cluster.go,
		// _refresh) and that Client.Close does not wait for: not ours, and
		// it ends on its own.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"),
		// A connection refused at its handshake (a wrong password) is
		// retried by rueidis after a backoff of under a second, from a
		// goroutine that Client.Close does not wait for either.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"),
	)
}
