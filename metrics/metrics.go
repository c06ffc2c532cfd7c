// Package metrics defines every metric wsgate exports and serves the admin
// port: /metrics, /healthz and /readyz.
//
// No metric carries a user, an IP address or a path as a label: label values
// come from small fixed sets, so the number of series stays bounded whatever
// clients do.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "holo_ws"

// Directions of relayed messages.
const (
	ClientToUpstream = "client_to_upstream"
	UpstreamToClient = "upstream_to_client"
)

// Results of a connection attempt, the values of connections_total{result}.
const (
	ResultOK              = "ok"               // upgraded and relayed
	ResultBadRequest      = "bad_request"      // not a valid WebSocket handshake
	ResultUpstreamError   = "upstream_error"   // upstream refused or reset: 502
	ResultUpstreamTimeout = "upstream_timeout" // upstream dial or handshake timed out: 504
	ResultUpstreamStatus  = "upstream_status"  // upstream answered without 101
	ResultUnauthorized    = "unauthorized"     // token missing or invalid: 401
	ResultForbidden       = "forbidden"        // origin refused: 403
	ResultRateLimited     = "rate_limited"     // refused by a limit: 4008
	ResultOverCapacity    = "over_capacity"    // --max-conns reached: 503
	ResultShuttingDown    = "shutting_down"    // arrived while draining
)

var results = []string{ResultOK, ResultBadRequest, ResultUpstreamError, ResultUpstreamTimeout,
	ResultUpstreamStatus, ResultUnauthorized, ResultForbidden, ResultRateLimited, ResultOverCapacity, ResultShuttingDown}

// statusLabels are the label values of the HTTP statuses 100-599, made
// once: a label per answer would otherwise allocate its string.
var statusLabels = func() (l [600]string) {
	for c := 100; c < len(l); c++ {
		l[c] = strconv.Itoa(c)
	}
	return l
}()

// StatusLabel returns http_requests_total's code label for an HTTP status:
// the status itself ("429"), or "other" outside 100-599, which keeps the
// label's values bounded whatever a backend answers.
func StatusLabel(code int) string {
	if code < 100 || code >= len(statusLabels) {
		return "other"
	}
	return statusLabels[code]
}

// Outcomes of a limiter decision, the values of limiter_decisions_total{decision}.
const (
	DecisionAllowed = "allowed"
	DecisionLimited = "limited"        // refused
	DecisionShadow  = "shadow_limited" // would have been refused, under --shadow
)

// What took a limiter decision, the values of limiter_decisions_total{cause}.
const (
	CauseRules    = "rules"    // the store (Redis or memory) applied the rules
	CauseFallback = "fallback" // --failure-mode decided: Redis failed or was too slow
)

// Who ended a connection, the values of closes_total{initiator}.
const (
	InitiatorClient   = "client"
	InitiatorUpstream = "upstream"
	InitiatorGate     = "gate"
)

// closeCodes are the codes that keep their own label value; others are
// bucketed by CodeLabel.
var closeCodes = []int{1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 4008}

// CodeLabel maps a close code to one of a fixed set of label values: the
// codes the gate and RFC 6455 name, "3xxx" and "4xxx" for application codes,
// "other" for the rest. 1006 stands for a connection that ended without a
// close frame.
func CodeLabel(code int) string {
	for _, c := range closeCodes {
		if c == code {
			return codeLabels[code]
		}
	}
	switch {
	case code >= 3000 && code <= 3999:
		return "3xxx"
	case code >= 4000 && code <= 4999:
		return "4xxx"
	}
	return "other"
}

var codeLabels = func() map[int]string {
	m := make(map[int]string, len(closeCodes))
	for _, c := range closeCodes {
		m[c] = strconv.Itoa(c)
	}
	return m
}()

// Metrics holds the gate's collectors. Create it with New.
type Metrics struct {
	ConnectionsActive prometheus.Gauge
	ConnectionsTotal  *prometheus.CounterVec // result
	Messages          *prometheus.CounterVec // direction
	MessageBytes      *prometheus.CounterVec // direction
	Closes            *prometheus.CounterVec // initiator, code
	HandshakeDuration prometheus.Histogram
	HTTPRequests      *prometheus.CounterVec // code: the exact status of a pass-through request
	RateLimited       *prometheus.CounterVec // scope, kind, rule, tier
	LimiterDecisions  *prometheus.CounterVec // decision, cause, tier
	LimiterDuration   *prometheus.HistogramVec
	LimiterFallback   prometheus.Counter
	AuthFailures      *prometheus.CounterVec // reason
	CloseBackstop     prometheus.Counter
	RulesReloads      *prometheus.CounterVec // result
	rulesInfo         *prometheus.GaugeVec
	buildInfo         *prometheus.GaugeVec
	registerer        prometheus.Registerer
}

// New creates the gate's metrics and registers them with reg. version and
// commit label holo_ws_build_info.
func New(reg prometheus.Registerer, version, commit string) *Metrics {
	m := &Metrics{
		registerer: reg,
		ConnectionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "connections_active",
			Help: "Proxied WebSocket connections open now.",
		}),
		ConnectionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "connections_total",
			Help: "WebSocket handshakes by result.",
		}, []string{"result"}),
		Messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "messages_total",
			Help: "Data messages relayed, by direction.",
		}, []string{"direction"}),
		MessageBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "message_bytes_total",
			Help: "Payload bytes of relayed data frames, by direction.",
		}, []string{"direction"}),
		Closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "closes_total",
			Help: "Finished connections by who ended them and the close code the client got (1006: no close frame).",
		}, []string{"initiator", "code"}),
		HandshakeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "handshake_duration_seconds",
			Help:    "Time from the client's upgrade request to the relay starting, upstream handshake included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "http_requests_total",
			Help: "Plain HTTP requests passed through, by the exact status the client got (\"other\" outside 100-599).",
		}, []string{"code"}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "rate_limited_total",
			Help: "Refusals by a rate limit: one per refused message, handshake or HTTP request, by the refusing rule (its flag, or its name in --rules-file), the rule's key (scope), what it refused (kind) and the client's tier (\"\" without tiers).",
		}, []string{"scope", "kind", "rule", "tier"}),
		LimiterDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "limiter_decisions_total",
			Help: "Limiter decisions, one per message, handshake or HTTP request: decision allowed, limited (enforced) or shadow_limited (--shadow); cause rules (the store decided) or fallback (--failure-mode decided because Redis failed or was too slow); the client's tier under a rules file (\"\" without tiers).",
		}, []string{"decision", "cause", "tier"}),
		LimiterDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "limiter_duration_seconds",
			Help:    "Time a limiter call took, by the store that decided; one call decides every message already buffered on a connection.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}, []string{"store"}),
		LimiterFallback: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "limiter_fallback_total",
			Help: "Decisions taken by --failure-mode because Redis failed or was too slow.",
		}),
		AuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "auth_failures_total",
			Help: "Refused tokens by reason.",
		}, []string{"reason"}),
		CloseBackstop: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "close_backstop_total",
			Help: "Connections the gate had to force closed because they outlived their close deadline by a close timeout; should stay 0.",
		}),
		RulesReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "rules_reloads_total",
			Help: "Reloads of --rules-file that changed it, by result: ok (the new rules are in force) or error (the rules in force stay).",
		}, []string{"result"}),
		rulesInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "rules_info",
			Help: "Always 1; labels name the rules in force: their file (\"flags\" for the rule flags) and its SHA-256.",
		}, []string{"source", "sha256"}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "build_info",
			Help: "Always 1; labels say which build runs.",
		}, []string{"version", "commit"}),
	}
	reg.MustRegister(m.ConnectionsActive, m.ConnectionsTotal, m.Messages, m.MessageBytes, m.Closes,
		m.HandshakeDuration, m.HTTPRequests, m.RateLimited, m.LimiterDecisions, m.LimiterDuration,
		m.LimiterFallback, m.AuthFailures, m.CloseBackstop, m.RulesReloads, m.rulesInfo, m.buildInfo)
	m.buildInfo.WithLabelValues(version, commit).Set(1)

	// Series that exist before their first event, so rate() and alerts see
	// a zero rather than nothing.
	for _, r := range results {
		m.ConnectionsTotal.WithLabelValues(r)
	}
	for _, d := range []string{ClientToUpstream, UpstreamToClient} {
		m.Messages.WithLabelValues(d)
		m.MessageBytes.WithLabelValues(d)
	}
	for _, r := range []string{"ok", "error"} {
		m.RulesReloads.WithLabelValues(r)
	}
	for _, d := range []string{DecisionAllowed, DecisionLimited, DecisionShadow} {
		for _, c := range []string{CauseRules, CauseFallback} {
			m.LimiterDecisions.WithLabelValues(d, c, "")
		}
	}
	return m
}

// RuleSeries are the labels of a rule's rate_limited_total series.
type RuleSeries struct{ Scope, Kind, Rule, Tier string }

// FlagRules are the series of the four rule flags.
var FlagRules = []RuleSeries{
	{"user", "message", "user-rate", ""}, {"ip", "message", "ip-rate", ""},
	{"user", "connection", "user-conn-rate", ""}, {"ip", "connection", "ip-conn-rate", ""},
}

// SetRules records the rules in force: their source ("flags" or the rules
// file), the file's SHA-256 ("" for the flags), and the rate_limited_total
// series of their rules, made at zero so that rate() and alerts see them
// before their first refusal. The series of rules no longer in force stay.
func (m *Metrics) SetRules(source, sha256 string, series []RuleSeries) {
	m.rulesInfo.Reset()
	m.rulesInfo.WithLabelValues(source, sha256).Set(1)
	for _, r := range series {
		m.RateLimited.WithLabelValues(r.Scope, r.Kind, r.Rule, r.Tier)
	}
}

// WatchRedis exports holo_ws_redis_up from up, which is called at each
// scrape (1 when Redis answers, 0 when not).
func (m *Metrics) WatchRedis(up func() bool) {
	m.registerer.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "redis_up",
		Help: "1 when the limiter's Redis is reachable, 0 when decisions fall back to --failure-mode.",
	}, func() float64 {
		if up() {
			return 1
		}
		return 0
	}))
}

// RegisterRuntime adds the Go runtime and process collectors to reg.
func RegisterRuntime(reg prometheus.Registerer) {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// AdminHandler serves /metrics from g, /healthz (200 while the process
// runs) and /readyz (200 while ready returns true, else 503).
func AdminHandler(g prometheus.Gatherer, ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}
