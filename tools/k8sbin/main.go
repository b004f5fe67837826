// Command k8s is a multi-call binary holding kube-apiserver, kube-controller-manager,
// kube-scheduler and kubectl: one compile and link instead of four. It dispatches on the
// name it was invoked as (symlinks), or on its first argument (`k8s kubectl get nodes`).
// Each branch mirrors the upstream main of the pinned release, blank imports included.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as upstream kube-apiserver/kube-controller-manager

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl: client auth plugins
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var servers = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": kcm.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func run(name string) {
	if name == "kubectl" {
		// As k8s cmd/kubectl: errors are printed by CheckErr, not by cobra.
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	if mk, ok := servers[name]; ok {
		os.Exit(cli.Run(mk()))
	}
	fmt.Fprintf(os.Stderr, "k8s: unknown command %q (want kube-apiserver, kube-controller-manager, kube-scheduler or kubectl)\n", name)
	os.Exit(2)
}

func main() {
	name := filepath.Base(os.Args[0])
	if name == "k8s" {
		if len(os.Args) < 2 {
			run("")
		}
		// `k8s <component> args...`: shift so the component sees its own argv.
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	run(name)
}
