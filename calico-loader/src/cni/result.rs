//! The result of ADD, in the configuration's `cniVersion`: 0.3.0 and later list interfaces,
//! addresses (with the interface they are on) and routes; 0.3.x and 0.4.0 give each address
//! its `version`; 0.1.0 and 0.2.0 have one `ip4` and one `ip6`.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::{
    config::version_at_least,
    link::{GATEWAY_V4, GATEWAY_V6, HOST_MAC},
};

/// The container side of an attachment, for the result.
pub struct ContainerInterface<'a> {
    pub host_veth: &'a str,
    pub name: &'a str,
    pub mac: &'a str,
    pub sandbox: &'a str,
}

fn address(ip: IpAddr) -> String {
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
}

/// The result of the `calico` plugin's ADD (or of `calico-ipam`'s, without interfaces).
pub fn add_result(
    version: &str,
    interface: Option<&ContainerInterface<'_>>,
    addresses: &[IpAddr],
) -> Value {
    if !version_at_least(version, "0.3.0") {
        let mut result = json!({"cniVersion": version, "dns": {}});
        if let Some(v4) = addresses.iter().find(|a| a.is_ipv4()) {
            result["ip4"] = json!({"ip": address(*v4)});
        }
        if let Some(v6) = addresses.iter().find(|a| a.is_ipv6()) {
            result["ip6"] = json!({"ip": address(*v6)});
        }
        return result;
    }
    let with_family = !version_at_least(version, "1.0.0");
    let ips: Vec<Value> = addresses
        .iter()
        .map(|ip| {
            let mut entry = json!({"address": address(*ip)});
            if interface.is_some() {
                entry["interface"] = json!(1);
            }
            if with_family {
                entry["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
            }
            entry
        })
        .collect();
    let mut result = json!({"cniVersion": version, "ips": ips, "dns": {}});
    if let Some(iface) = interface {
        result["interfaces"] = json!([
            {"name": iface.host_veth, "mac": HOST_MAC},
            {"name": iface.name, "mac": iface.mac, "sandbox": iface.sandbox},
        ]);
        let mut routes = Vec::new();
        if addresses.iter().any(IpAddr::is_ipv4) {
            routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY_V4}));
        }
        if addresses.iter().any(IpAddr::is_ipv6) {
            routes.push(json!({"dst": "::/0", "gw": GATEWAY_V6}));
        }
        result["routes"] = json!(routes);
    }
    result
}

/// The addresses of a previous result (CHECK), as `ip/prefix` text.
pub fn result_addresses(prev: &Value) -> Vec<String> {
    let mut out: Vec<String> = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str().map(str::to_owned))
        .collect();
    for key in ["ip4", "ip6"] {
        if let Some(ip) = prev[key]["ip"].as_str() {
            out.push(ip.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> ContainerInterface<'static> {
        ContainerInterface {
            host_veth: "cali0123456789a",
            name: "eth0",
            mac: "02:00:00:00:00:01",
            sandbox: "/run/netns/x",
        }
    }

    #[test]
    fn results_follow_the_version() {
        let addrs: Vec<IpAddr> = vec![
            "198.18.0.1".parse().expect("ip"),
            "2001:db8::1".parse().expect("ip"),
        ];
        let v1 = add_result("1.0.0", Some(&iface()), &addrs);
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert_eq!(v1["interfaces"][1]["mac"], "02:00:00:00:00:01");
        assert_eq!(v1["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(v1["ips"][0]["address"], "198.18.0.1/32");
        assert_eq!(v1["ips"][1]["address"], "2001:db8::1/128");
        assert_eq!(v1["ips"][0]["interface"], 1);
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["routes"][0]["gw"], "169.254.1.1");
        let v04 = add_result("0.4.0", Some(&iface()), &addrs);
        assert_eq!(v04["ips"][1]["version"], "6");
        let v02 = add_result("0.2.0", Some(&iface()), &addrs);
        assert_eq!(v02["ip4"]["ip"], "198.18.0.1/32");
        assert_eq!(v02["ip6"]["ip"], "2001:db8::1/128");
        let ipam = add_result("1.0.0", None, &addrs[..1]);
        assert!(ipam.get("interfaces").is_none());
        assert!(ipam["ips"][0].get("interface").is_none());
        assert_eq!(result_addresses(&v1), ["198.18.0.1/32", "2001:db8::1/128"]);
        assert_eq!(result_addresses(&v02), ["198.18.0.1/32", "2001:db8::1/128"]);
    }
}
