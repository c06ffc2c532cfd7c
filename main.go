// Command wsgate is a sidecar that protects a WebSocket backend: it
// terminates client WebSockets, limits connections and messages per user
// and per client IP, relays every frame to the backend and back, and
// exports Prometheus metrics.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/holo/wsgate/internal/gcpace"
)

// Set by the linker: -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "none"
)

// gcPercent is the gate's GC target unless GOGC says otherwise. The
// per-frame path allocates nothing, so the heap that GC paces is the live
// state of the connections plus handshake garbage, and the memory an idle
// connection costs follows the target: 15 against 25 (both with the floor,
// which at 9,000 connections still holds the percentage near 18) took a
// quarter of a KiB off each of 9,000 idle connections, at the price of more
// frequent collections during handshake storms while many connections are
// open. gcFloor is the least headroom over the live heap (gcpace): with few
// connections open, a percentage of the heap would collect every few dozen
// handshakes (with the floor, every 200 or so; the handshake rate rose by
// a fifth to a quarter).
const (
	gcPercent = 15
	gcFloor   = 4 << 20
)

func main() {
	if os.Getenv("GOGC") == "" {
		gcpace.Start(gcPercent, gcFloor)
	}
	if err := newApp().Run(adminArgsLast(os.Args)); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(os.Stderr, msg)
			}
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "wsgate:", err)
		os.Exit(1)
	}
}

// exitBadConfig is the exit code of a bad flag, at start or in check-config.
const exitBadConfig = 2

func newApp() *cli.App {
	cli.VersionPrinter = func(c *cli.Context) {
		fmt.Fprintf(c.App.Writer, "wsgate %s (commit %s, %s)\n", version, commit, runtime.Version())
	}
	usageError := func(_ *cli.Context, err error, _ bool) error {
		return cli.Exit("wsgate: "+explainUsage(err, flags(true)), exitBadConfig)
	}
	return &cli.App{
		Name:            "wsgate",
		Usage:           "limit and relay WebSocket traffic in front of an unmodified backend",
		Version:         version,
		Flags:           flags(true),
		OnUsageError:    usageError,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			cfg, err := configFrom(c, false)
			if err != nil {
				return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
			}
			return serve(c.Context, cfg, nil)
		},
		Commands: []*cli.Command{
			{
				Name:         "check-config",
				Usage:        "validate the flags and environment, print nothing and exit 0, or one line and exit 2",
				Flags:        flags(true),
				OnUsageError: usageError,
				Before:       inheritFlags,
				Action: func(c *cli.Context) error {
					if _, err := configFrom(c, false); err != nil {
						return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
					}
					return nil
				},
			},
			{
				Name:         "demo",
				Usage:        "run the gate on the memory store in front of a built-in echo backend and page",
				Flags:        flags(false),
				OnUsageError: usageError,
				Before:       inheritFlags,
				Action: func(c *cli.Context) error {
					cfg, err := configFrom(c, true)
					if err != nil {
						return cli.Exit("wsgate: "+err.Error(), exitBadConfig)
					}
					if !c.IsSet("health-passthrough") {
						// The page and its icon are static assets, passed
						// the way an operator would pass them: loading the
						// page must not spend the budget its burst shows.
						cfg.proxy.HealthPaths = []string{"/", "/favicon.ico"}
					}
					return serveDemo(c.Context, cfg)
				},
			},
			rulesCommand(),
			adminCommand(),
		},
	}
}
