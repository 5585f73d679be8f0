"""The LoadTest operator (kopf): LoadTests become Indexed Jobs; results become status.

Modules, each one concept:

``settings``  the operator's own settings (flags, env names, defaults, help)
``jobs``      pure: LoadTest -> spec ConfigMap + Indexed Job manifests, names, Redis key
``status``    pure: observed Job + shard results -> status fields, conditions, Events
``kube``      the few Kubernetes API calls (official client, sync)
``handlers``  the kopf handlers (create, timer, spec update) and start-up settings
``main``      ``scalechat operator``: flags -> kopf, standalone

RBAC the operator needs (a Role in the watched namespace, or a ClusterRole with
``--all-namespaces``):

* ``scalechat.io`` ``loadtests``: list, watch, patch (kopf: watching, its
  annotations and its finalizer); ``loadtests/status``: patch;
  ``loadtests/finalizers``: update (clusters with the
  OwnerReferencesPermissionEnforcement admission plugin require it to set
  ``blockOwnerDeletion`` on the children)
* ``batch`` ``jobs``: create, get
* core ``configmaps``: create, get
* core ``events``: create
"""
