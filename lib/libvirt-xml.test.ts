import { describe, expect, it } from "vitest";
import { diskXml, firstFreeTarget, parseDomainDisks } from "./libvirt-xml.js";

const DOMAIN = `<domain type='qemu' id='3'>
  <name>web1</name>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name='data1'>
        <host transport='unix' socket='/run/stowage/volumes/data1.sock'/>
      </source>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type="file" device="disk">
      <source file="/var/lib/images/a&amp;b.qcow2" index="2"/>
      <target dev="vdb" bus="virtio"/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='nbd' name='exp'>
        <host name='10.0.0.5' port='10809'/>
      </source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>`;

describe("parseDomainDisks", () => {
  it("reads every disk with its source, in order, and decodes entities", () => {
    expect(parseDomainDisks(DOMAIN)).toEqual([
      { target: "vda", device: "disk", type: "network", protocol: "nbd", exportName: "data1", socketPath: "/run/stowage/volumes/data1.sock", source: "/run/stowage/volumes/data1.sock (data1)" },
      { target: "vdb", device: "disk", type: "file", protocol: "", exportName: "", socketPath: "", source: "/var/lib/images/a&b.qcow2" },
      { target: "vdc", device: "disk", type: "network", protocol: "nbd", exportName: "exp", socketPath: "", source: "10.0.0.5:10809/exp" },
      { target: "hdc", device: "cdrom", type: "file", protocol: "", exportName: "", socketPath: "", source: "" },
    ]);
  });

  it("finds no disks in a domain without any", () => {
    expect(parseDomainDisks("<domain><devices><serial type='pty'/></devices></domain>")).toEqual([]);
  });

  it("round-trips the element diskXml writes, escaping quotes and ampersands", () => {
    const xml = diskXml({ volume: "v1", socketPath: "/run/a'b&c/v1.sock", target: "vdb" });
    expect(xml).toContain("socket='/run/a&apos;b&amp;c/v1.sock'");
    expect(parseDomainDisks(xml)).toEqual([
      { target: "vdb", device: "disk", type: "network", protocol: "nbd", exportName: "v1", socketPath: "/run/a'b&c/v1.sock", source: "/run/a'b&c/v1.sock (v1)" },
    ]);
  });
});

describe("firstFreeTarget", () => {
  it("takes the first unused vdX, then two letters", () => {
    expect(firstFreeTarget([])).toBe("vda");
    expect(firstFreeTarget(["vda", "vdc", "hdc"])).toBe("vdb");
    const all = Array.from({ length: 26 }, (_, i) => `vd${String.fromCharCode(97 + i)}`);
    expect(firstFreeTarget(all)).toBe("vdaa");
  });
});
