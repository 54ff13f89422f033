// A CoreDNS with only the plugins the local cluster's DNS needs (see docs/local-cluster.md).
//
// Upstream's default build links every plugin, cloud back-ends included; this one links the
// handful the Corefile of oshu_localkube uses, so it builds in a fraction of the time and
// cannot forward anything: there is no forward plugin in it at all.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// Plugin order matters in CoreDNS: this is upstream's plugin.cfg order, restricted to ours.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"cache",
	"loadbalance",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
