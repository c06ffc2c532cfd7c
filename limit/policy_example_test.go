package limit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/holo/wsgate/limit"
	"github.com/holo/wsgate/policy"
)

func ExampleLimiter_Charge() {
	chat := &policy.Rule{
		Name:   "chat",
		Limits: []policy.Window{{Limit: 2, Per: 10 * time.Second}, {Limit: 100, Per: time.Hour}},
		Block:  []time.Duration{time.Minute, 10 * time.Minute},
	}
	l, err := limit.New(limit.Config{}) // the memory store; Config.RedisURL shares the limits
	if err != nil {
		panic(err)
	}
	defer l.Close()

	ctx := context.Background()
	cs := []limit.Charge{{Rule: chat, Limits: chat.Limits, Key: "alice"}}
	for range 3 {
		d := l.Charge(ctx, limit.KindMessage, cs, 1, 0)
		fmt.Println(d.Allowed, d.Rule, d.RetryAfter)
	}
	d := l.Charge(ctx, limit.KindMessage, cs, 1, 0)
	fmt.Println(d.Allowed, d.Rule, d.Blocked)
	// Output:
	// true  0s
	// true  0s
	// false chat 1m0s
	// false chat true
}
