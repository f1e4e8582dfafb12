//! The admission and the read-back check on engine-style definitions and hostile variants.

use super::*;
use crate::virt::vm_xml::PlacedDrive;

const VM: &str = "11111111-2222-3333-4444-555555555555";

fn rules() -> VmFileRules {
    VmFileRules {
        boot_dirs: vec![PathBuf::from("/srv/boot")],
        firmware_dirs: vec![PathBuf::from("/usr/share/OVMF")],
        console_log_dir: PathBuf::from("/var/log/rvdsm/console"),
        console_socket_dir: PathBuf::from("/run/ovirt-vmconsole-console"),
        nvram_dir: PathBuf::from("/var/lib/libvirt/qemu/nvram"),
    }
}

/// An engine's definition, much as `LibvirtVmXmlBuilder` writes it, with `devices` added.
fn engine(devices: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><domain type="kvm" xmlns:ovirt-tune="http://ovirt.org/vm/tune/1.0" xmlns:ovirt-vm="http://ovirt.org/vm/1.0">
  <name>web</name><uuid>{VM}</uuid>
  <memory>1048576</memory><currentMemory>1048576</currentMemory>
  <maxMemory slots="16">4194304</maxMemory>
  <vcpu current="2">16</vcpu>
  <sysinfo type="smbios"><system><entry name="manufacturer">oVirt</entry></system></sysinfo>
  <clock offset="variable" adjustment="0"><timer name="rtc" tickpolicy="catchup"/></clock>
  <features><acpi/></features>
  <cpu match="exact"><model>Skylake-Client</model><topology cores="1" threads="1" sockets="16"/></cpu>
  <cputune/>
  <devices>
    <input type="tablet" bus="usb"/>
    <channel type="unix"><target type="virtio" name="ovirt-guest-agent.0"/><source mode="bind" path="/var/lib/libvirt/qemu/channels/{VM}.ovirt-guest-agent.0"/></channel>
    <channel type="unix"><target type="virtio" name="org.qemu.guest_agent.0"/><source mode="bind" path="/var/lib/libvirt/qemu/channels/{VM}.org.qemu.guest_agent.0"/></channel>
    <graphics type="vnc" port="-1" autoport="yes" passwd="*****"><listen type="network" network="vdsm-ovirtmgmt"/></graphics>
    <controller type="virtio-serial" index="0" ports="16"/>
    <rng model="virtio"><backend model="random">/dev/urandom</backend></rng>
    <video><model type="qxl" vram="8192" heads="1"/></video>
    <memballoon model="virtio"/>
    <interface type="bridge"><model type="virtio"/><link state="up"/><source bridge="ovirtmgmt"/><mac address="56:6f:3e:96:00:00"/><filterref filter="vdsm-no-mac-spoofing"/></interface>
    <disk type="file" device="cdrom" snapshot="no"><driver name="qemu" type="raw" error_policy="report"/><source file="" startupPolicy="optional"/><target dev="sdc" bus="sata"/><readonly/></disk>
    <disk snapshot="no" type="file" device="disk"><target dev="vda" bus="virtio"/><source file="/rhev/data-center/x/y/images/z/v"/><driver name="qemu" io="threads" type="raw" error_policy="stop" cache="none"/><serial>z</serial></disk>
    <serial type="unix"><source mode="bind" path="/var/run/ovirt-vmconsole-console/{VM}.sock"/><target port="0"/></serial>
    <console type="unix"><source mode="bind" path="/var/run/ovirt-vmconsole-console/{VM}.sock"/><target type="serial" port="0"/></console>
    {devices}
  </devices>
  <pm><suspend-to-disk enabled="false"/><suspend-to-mem enabled="false"/></pm>
  <os><type arch="x86_64" machine="pc-q35-rhel8.1.0">hvm</type><smbios mode="sysinfo"/><bios useserial="yes"/></os>
  <metadata><ovirt-tune:qos/><ovirt-vm:vm><ovirt-vm:device devtype="disk" name="vda"/></ovirt-vm:vm></metadata>
</domain>"#
    )
}

fn vm() -> Uuid {
    Uuid::parse_str(VM).unwrap()
}

fn admit_engine(xml: &str) -> Result<Admitted, VirtError> {
    admit(xml, vm(), &["vda"], &rules())
}

fn refusal(xml: &str) -> String {
    match admit_engine(xml) {
        Ok(admitted) => panic!("accepted: {}", admitted.xml),
        Err(err) => err.to_string(),
    }
}

#[test]
fn an_engine_definition_is_admitted_with_rvdsms_paths() {
    let admitted = admit_engine(&engine("")).unwrap();
    let xml = &admitted.xml;
    let sock = format!("/run/ovirt-vmconsole-console/{VM}.sock");
    assert_eq!(xml.matches(&sock).count(), 2, "{xml}");
    assert!(!xml.contains("/var/run/ovirt-vmconsole-console"), "{xml}");
    assert!(!xml.contains("/var/lib/libvirt/qemu/channels"), "{xml}");
    assert_eq!(xml.matches("<source mode='bind'/>").count(), 2, "{xml}");
    assert_eq!(admitted.placed, vec![PathBuf::from(sock)]);
    assert!(admitted.host_files.is_empty());
    // The drive's source is left for the drive placement.
    assert!(xml.contains("/rhev/data-center/x/y/images/z/v"), "{xml}");
}

#[test]
fn a_console_log_goes_where_rvdsm_says() {
    let xml = engine(
        "<serial type='file'><source path='/etc/cron.d/evil'/><target port='1'/></serial>\
         <console type='file'><source path='/etc/cron.d/evil'/><target type='serial'/></console>",
    );
    let admitted = admit_engine(&xml).unwrap();
    assert!(!admitted.xml.contains("/etc/cron.d"), "{}", admitted.xml);
    let log = format!("/var/log/rvdsm/console/{VM}.log");
    assert_eq!(admitted.xml.matches(&log).count(), 2);
    assert!(admitted.placed.contains(&PathBuf::from(log)));
    let two = engine(
        "<serial type='file'><source path='/a'/></serial><serial type='file'><source path='/b'/></serial>",
    );
    assert!(refusal(&two).contains("second console log"));
}

#[test]
fn host_paths_and_devices_are_refused_by_name() {
    let cases = [
        (
            "<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdb'/></disk>",
            "disk vdb",
        ),
        (
            "<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdb'/></disk>",
            "disk vdb",
        ),
        (
            "<disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vdb'/></disk>",
            "<disk>",
        ),
        (
            "<disk type='file' device='cdrom'><source file='/etc/shadow'/><target dev='hdc'/></disk>",
            "CD-ROM with media",
        ),
        (
            "<serial type='pty'><log file='/etc/evil'/></serial>",
            "<log>",
        ),
        (
            "<serial type='pty'><source path='/etc/x'/></serial>",
            "<source> in <serial>",
        ),
        (
            "<serial type='tcp'><source mode='connect' host='10.0.0.1' service='9'/></serial>",
            "<serial>",
        ),
        (
            "<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>",
            "<filesystem>",
        ),
        ("<hostdev mode='subsystem' type='pci'/>", "<hostdev>"),
        ("<emulator>/tmp/evil</emulator>", "<emulator>"),
        (
            "<interface type='ethernet'><script path='/tmp/x'/></interface>",
            "<interface>",
        ),
        (
            "<interface type='bridge'><source bridge='b'/><backend tap='/dev/evil'/></interface>",
            "tap",
        ),
        (
            "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>",
            "<interface>",
        ),
        (
            "<rng model='virtio'><backend model='random'>/etc/shadow</backend></rng>",
            "<rng>",
        ),
        (
            "<channel type='unix'><target type='virtio' name='../../etc/x'/></channel>",
            "<channel>",
        ),
        (
            "<channel type='file'><source path='/x'/><target type='virtio' name='a'/></channel>",
            "<channel>",
        ),
        (
            "<memory model='nvdimm'><source><path>/dev/shm/x</path></source></memory>",
            "<memory>",
        ),
        (
            "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>",
            "<tpm>",
        ),
        (
            "<smartcard mode='host-certificates'><database>/etc/pki/nssdb</database></smartcard>",
            "<smartcard>",
        ),
        (
            "<graphics type='vnc'><listen type='socket' socket='/run/evil.sock'/></graphics>",
            "socket",
        ),
        ("<audio id='1' type='file' path='/tmp/a.wav'/>", "<audio>"),
        (
            "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event0'/></input>",
            "evdev",
        ),
        (
            "<disk type='file' device='disk'><target dev='vda'/></disk>",
            "used twice",
        ),
    ];
    for (device, named) in cases {
        let err = refusal(&engine(device));
        assert!(err.contains(named), "{device}: {err}");
    }
}

#[test]
fn a_backing_store_a_mirror_or_a_second_source_in_a_drive_is_refused() {
    let base = engine("");
    let drive_end = "<serial>z</serial></disk>";
    for (extra, named) in [
        (
            "<backingStore type='file'><format type='qcow2'/><source file='/etc/shadow'/></backingStore>",
            "<backingStore>",
        ),
        ("<backingStore/>", "<backingStore>"),
        ("<source file='/etc/shadow'/>", "second one"),
        ("<mirror type='file' file='/tmp/m'/>", "<mirror>"),
    ] {
        let xml = base.replace(drive_end, &format!("<serial>z</serial>{extra}</disk>"));
        let err = refusal(&xml);
        assert!(err.contains(named), "{extra}: {err}");
    }
}

#[test]
fn foreign_namespaces_outside_the_metadata_are_refused() {
    let decoy = engine("").replace(
        "<devices>",
        "<devices><x:disk xmlns:x='urn:decoy' type='file' device='disk'><x:target dev='vda'/></x:disk>",
    );
    assert!(refusal(&decoy).contains("urn:decoy"));
    let commandline = engine("").replace(
        "</devices>",
        "</devices><qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-drive'/></qemu:commandline>",
    );
    assert!(refusal(&commandline).contains("qemu/1.0"));
    let attribute = engine("").replace(
        "<memballoon model=\"virtio\"/>",
        "<memballoon xmlns:y='urn:y' y:model='x' model='virtio'/>",
    );
    assert!(refusal(&attribute).contains("namespace"));
}

#[test]
fn elements_outside_the_allowlists_and_second_ones_are_refused() {
    for (xml, named) in [
        (engine("").replace("<pm>", "<seclabel type='none'/><pm>"), "<seclabel>"),
        (engine("").replace("<pm>", "<bootloader>/usr/bin/pygrub</bootloader><pm>"), "<bootloader>"),
        (engine("").replace("<pm>", "<devices/><pm>"), "second one"),
        (engine("").replace("<bios useserial=\"yes\"/>", "<dtb>/boot/x.dtb</dtb>"), "<dtb>"),
        (engine("").replace("<bios useserial=\"yes\"/>", "<acpi><table type='slic'>/x</table></acpi>"), "<acpi>"),
        (engine("").replace("<sysinfo type=\"smbios\">", "<sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo><sysinfo type=\"smbios\">"), "file"),
    ] {
        let err = refusal(&xml);
        assert!(err.contains(named), "{named}: {err}");
    }
    assert!(refusal("<vm/>").contains("<vm>"));
}

#[test]
fn boot_and_firmware_files_must_be_in_the_configured_directories() {
    let with_os = |os: &str| engine("").replace("<bios useserial=\"yes\"/>", os);
    let admitted = admit_engine(&with_os(
        "<kernel>/srv/boot/vmlinuz</kernel><initrd>/srv/boot/initrd.img</initrd><cmdline>console=ttyS0</cmdline>",
    ))
    .unwrap();
    let files: Vec<_> = admitted.host_files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(
        files,
        vec![
            PathBuf::from("/srv/boot/vmlinuz"),
            PathBuf::from("/srv/boot/initrd.img")
        ]
    );
    for os in [
        "<kernel>/etc/shadow</kernel>",
        "<kernel>/srv/boot/../../etc/shadow</kernel>",
        "<initrd>/srv/bootx/initrd</initrd>",
        "<loader readonly='yes' type='pflash'>/tmp/OVMF_CODE.fd</loader>",
        "<nvram template='/etc/shadow'>/var/lib/libvirt/qemu/nvram/x.fd</nvram>",
    ] {
        assert!(admit_engine(&with_os(os)).is_err(), "{os} was admitted");
    }
    let uefi = admit_engine(&with_os(
        "<loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>\
         <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/etc/cron.d/evil</nvram>",
    ))
    .unwrap();
    let nvram = format!("/var/lib/libvirt/qemu/nvram/{VM}.fd");
    assert!(
        uefi.xml.contains(&format!(">{nvram}</nvram>")),
        "{}",
        uefi.xml
    );
    assert!(!uefi.xml.contains("/etc/cron.d"), "{}", uefi.xml);
    assert_eq!(uefi.host_files.len(), 2);
    assert!(uefi.placed.contains(&PathBuf::from(nvram)));
}

#[test]
fn a_managed_drive_without_its_disk_or_on_a_cdrom_is_refused() {
    let err = admit(&engine(""), vm(), &["vda", "vdz"], &rules()).unwrap_err();
    assert!(err.to_string().contains("vdz"), "{err}");
    let err = admit(&engine(""), vm(), &["sdc"], &rules()).unwrap_err();
    assert!(err.to_string().contains("sdc"), "{err}");
}

fn placed(target: &str, path: &str) -> PlacedDrive {
    PlacedDrive {
        target: target.into(),
        path: path.into(),
        format: "qcow2".into(),
        chain: Vec::new(),
    }
}

/// A definition as libvirt gives it back.
fn defined(disk_source: &str, extra: &str) -> String {
    format!(
        "<domain type='qemu'><name>x</name><uuid>{VM}</uuid><os><type>hvm</type>\
         <kernel>/srv/boot/vmlinuz</kernel></os><devices>\
         <emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{disk_source}'/><target dev='vda' bus='virtio'/></disk>\
         <serial type='file'><source path='/var/log/rvdsm/console/{VM}.log'/></serial>\
         <console type='file'><source path='/var/log/rvdsm/console/{VM}.log'/></console>\
         {extra}</devices></domain>"
    )
}

fn expected() -> Expected {
    Expected {
        drives: vec![placed("vda", "/rhev/p/d/images/i/v")],
        paths: [
            "/srv/boot/vmlinuz".to_owned(),
            format!("/var/log/rvdsm/console/{VM}.log"),
        ]
        .into(),
    }
}

#[test]
fn libvirts_definition_is_checked_against_the_placement() {
    verify_defined(&defined("/rhev/p/d/images/i/v", ""), &expected()).unwrap();
    for (xml, named) in [
        (defined("/etc/shadow", ""), "disk vda"),
        (
            defined("/rhev/p/d/images/i/v", "<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdb'/></disk>"),
            "disk vdb",
        ),
        (
            defined("/rhev/p/d/images/i/v", "<hostdev mode='subsystem' type='pci'/>"),
            "<hostdev>",
        ),
        (
            defined("/rhev/p/d/images/i/v", "").replace("<console type='file'><source path='/var/log/rvdsm/console/", "<console type='file'><source path='/tmp/"),
            "/tmp/",
        ),
        (
            defined("/rhev/p/d/images/i/v", "").replace("<target dev='vda' bus='virtio'/>", "<target dev='vda'/><backingStore type='file'><source file='/etc/shadow'/></backingStore>"),
            "backing chain",
        ),
        (
            defined("/rhev/p/d/images/i/v", "").replace("type='qcow2'", "type='raw'"),
            "reads it as",
        ),
    ] {
        let err = verify_defined(&xml, &expected()).unwrap_err().to_string();
        assert!(err.contains(named), "{named}: {err}");
    }
}

#[test]
fn a_drive_libvirt_lost_is_refused() {
    let mut two = expected();
    two.drives.push(placed("vdb", "/rhev/p/d/images/i/w"));
    let err = verify_defined(&defined("/rhev/p/d/images/i/v", ""), &two).unwrap_err();
    assert!(err.to_string().contains("lost it"), "{err}");
}

#[test]
fn what_reaches_the_host_beyond_files_is_refused() {
    let with_os = |os: &str| engine("").replace("<bios useserial=\"yes\"/>", os);
    for (xml, named) in [
        (
            with_os("<loader readonly='no' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"),
            "read-only",
        ),
        (
            with_os("<loader type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"),
            "read-only",
        ),
        (
            with_os("<kernel>/srv/boot/vmlinuz<!-- x -->X</kernel>"),
            "one plain text",
        ),
        (engine("<graphics type='egl-headless'/>"), "<graphics>"),
        (engine("<graphics type='sdl' display=':0'/>"), "<graphics>"),
        (
            engine("<graphics type='spice'><gl enable='yes'/></graphics>"),
            "<gl>",
        ),
        (
            engine("<video><driver name='vhostuser'/><model type='virtio'/></video>"),
            "vhost-user",
        ),
        (
            engine("<graphics type='vnc'><x attribute='/etc/shadow'/></graphics>"),
            "/etc/shadow",
        ),
        (
            engine("").replace(
                "<cputune/>",
                "<cputune><vcpusched vcpus='0' scheduler='fifo' priority='1'/></cputune>",
            ),
            "real-time",
        ),
        (
            engine("").replace(
                "<cputune/>",
                "<cputune/><resource><partition>/system.slice</partition></resource>",
            ),
            "/machine",
        ),
    ] {
        let err = refusal(&xml);
        assert!(err.contains(named), "{named}: {err}");
    }
    let rom = with_os("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>");
    assert!(admit_engine(&rom).is_ok());
    let machine = engine("").replace(
        "<cputune/>",
        "<cputune/><resource><partition>/machine</partition></resource>",
    );
    assert!(admit_engine(&machine).is_ok());
}

#[test]
fn a_deeply_nested_definition_is_refused_before_it_is_parsed() {
    let deep = engine("").replace(
        "<features><acpi/></features>",
        &format!(
            "<features>{}{}</features>",
            "<a>".repeat(40_000),
            "</a>".repeat(40_000)
        ),
    );
    assert!(refusal(&deep).contains("deeper"));
}
