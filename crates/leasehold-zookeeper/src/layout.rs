//! Where things live in the ZooKeeper tree: every path this crate uses is computed here,
//! through the codec.

use std::sync::Arc;

use leasehold::codec::{KeyContext, NodeNaming};
use leasehold::{Codec, Instance, ServiceName};

/// Curator's protected-mode marker: a node named `_c_{guid}-...` can be found again by
/// its creator after a create whose reply was lost.
const PROTECTED: &str = "_c_";

/// The length of the guid in a protected node name (a UUID as 32 hex digits).
const GUID_LEN: usize = 32;

/// The length of the sequence number ZooKeeper appends to a sequential node's name.
const SEQUENCE_LEN: usize = 10;

/// The registry's layout: `{root}/{service}/_c_{guid}-{instance key}{sequence}`.
#[derive(Debug)]
pub(crate) struct Layout {
    root: String,
    codec: Arc<dyn Codec>,
}

impl Layout {
    /// A layout under `root` (absolute with no trailing `/`, or empty for the top of the
    /// tree) for `codec`'s format.
    pub(crate) fn new(root: String, codec: Arc<dyn Codec>) -> Self {
        Layout { root, codec }
    }

    /// The node whose children are the services.
    pub(crate) fn root_node(&self) -> &str {
        if self.root.is_empty() {
            "/"
        } else {
            &self.root
        }
    }

    pub(crate) fn codec(&self) -> &Arc<dyn Codec> {
        &self.codec
    }

    /// The node whose children are the instances of `service`.
    pub(crate) fn service_path(&self, service: &ServiceName) -> String {
        let prefix = self.codec.service_prefix(&self.root, service);
        prefix.trim_end_matches('/').to_owned()
    }

    /// The path of an instance node, given its name under the service node.
    pub(crate) fn child_path(&self, service: &ServiceName, name: &str) -> String {
        format!("{}/{name}", self.service_path(service))
    }

    /// How the codec names instance nodes.
    pub(crate) fn naming(&self) -> NodeNaming {
        self.codec.node_naming()
    }

    /// The instance's key under its service node (the whole name for
    /// [`NodeNaming::Exact`], the part after the guid for protected nodes).
    fn instance_key(&self, instance: &Instance) -> String {
        self.codec.instance_key(instance, &KeyContext::default())
    }

    /// The path to create `instance` at as a protected sequential node: ZooKeeper
    /// appends the sequence number.
    pub(crate) fn protected_prefix(&self, instance: &Instance, guid: &str) -> String {
        self.child_path(
            instance.service(),
            &format!("{PROTECTED}{guid}-{}", self.instance_key(instance)),
        )
    }

    /// The path of `instance`'s node for [`NodeNaming::Exact`].
    pub(crate) fn exact_path(&self, instance: &Instance) -> String {
        self.child_path(instance.service(), &self.instance_key(instance))
    }

    /// A fresh guid for [`protected_prefix`](Self::protected_prefix).
    pub(crate) fn new_guid() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// The instance key in a protected node's name (`_c_{guid}-{key}{sequence}`), or
    /// `None` if `name` is not a protected node.
    pub(crate) fn protected_key(name: &str) -> Option<&str> {
        let rest = name.strip_prefix(PROTECTED)?;
        let rest = rest.get(GUID_LEN..)?.strip_prefix('-')?;
        let cut = rest.len().checked_sub(SEQUENCE_LEN)?;
        rest[cut..]
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| &rest[..cut])
    }

    /// The instance key `instance`'s nodes carry in their names, if the naming puts one
    /// there (go-kit's names carry none).
    pub(crate) fn key_in_name(&self, instance: &Instance) -> Option<String> {
        Some(self.instance_key(instance)).filter(|key| !key.is_empty())
    }

    /// Whether the node called `name` was created with `guid`.
    pub(crate) fn has_guid(name: &str, guid: &str) -> bool {
        name.strip_prefix(PROTECTED)
            .and_then(|rest| rest.strip_prefix(guid))
            .is_some_and(|rest| guid.len() == GUID_LEN && rest.starts_with('-'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::formats::{CuratorCodec, GoKitZkCodec};
    use leasehold::NativeCodec;

    #[test]
    fn paths_follow_the_protected_naming() {
        let layout = Layout::new("/leasehold/services".into(), Arc::new(NativeCodec));
        let instance = Instance::builder("echo", "127.0.0.1:1").id("a").build().unwrap();
        let guid = Layout::new_guid();
        assert_eq!(guid.len(), GUID_LEN);
        let prefix = layout.protected_prefix(&instance, &guid);
        assert_eq!(prefix, format!("/leasehold/services/echo/_c_{guid}-a"));
        let name = format!("_c_{guid}-a0000000007");
        assert!(Layout::has_guid(&name, &guid));
        assert!(!Layout::has_guid(&name, &Layout::new_guid()));
        assert!(!Layout::has_guid("a0000000007", &guid));
        assert_eq!(Layout::protected_key(&name), Some("a"));
        assert_eq!(Layout::protected_key("~drained-a"), None);
        assert_eq!(Layout::protected_key(&format!("_c_{guid}-0000000001")), Some(""));
        assert_eq!(layout.exact_path(&instance), "/leasehold/services/echo/a");
        let top = Layout::new(String::new(), Arc::new(NativeCodec));
        assert_eq!(
            (top.root_node(), top.service_path(instance.service()).as_str()),
            ("/", "/echo")
        );
    }

    #[test]
    fn go_kit_nodes_have_no_instance_key_and_curator_nodes_are_the_id() {
        let instance = Instance::builder("hello", "10.0.0.5:8080")
            .id("a")
            .build()
            .unwrap();
        let go_kit = Layout::new("/services".into(), Arc::new(GoKitZkCodec));
        let guid = Layout::new_guid();
        assert_eq!(go_kit.naming(), NodeNaming::ProtectedSequential);
        assert_eq!(
            go_kit.protected_prefix(&instance, &guid),
            format!("/services/hello/_c_{guid}-")
        );
        assert!(Layout::has_guid(&format!("_c_{guid}-0000000000"), &guid));
        let curator = Layout::new("/services".into(), Arc::new(CuratorCodec::new()));
        assert_eq!(curator.naming(), NodeNaming::Exact);
        assert_eq!(curator.exact_path(&instance), "/services/hello/a");
    }
}
