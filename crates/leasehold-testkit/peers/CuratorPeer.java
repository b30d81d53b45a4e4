// A real Apache Curator x-discovery client (Debian libcurator-discovery-java), run by
// leasehold-testkit as an interoperability peer: `register` holds one instance until its
// standard input closes; `query` prints every instance of a service as Curator serializes it.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.retry.RetryOneTime;
import org.apache.curator.x.discovery.ServiceDiscovery;
import org.apache.curator.x.discovery.ServiceDiscoveryBuilder;
import org.apache.curator.x.discovery.ServiceInstance;
import org.apache.curator.x.discovery.UriSpec;
import org.apache.curator.x.discovery.details.JsonInstanceSerializer;

public class CuratorPeer {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String connect = args[1];
        String basePath = args[2];
        String name = args[3];
        CuratorFramework client = CuratorFrameworkFactory.newClient(connect, new RetryOneTime(200));
        client.start();
        client.blockUntilConnected();
        @SuppressWarnings({"unchecked", "rawtypes"})
        JsonInstanceSerializer<Map> serializer = new JsonInstanceSerializer<>(Map.class);
        ServiceDiscovery<Map> discovery = ServiceDiscoveryBuilder.builder(Map.class)
                .client(client).basePath(basePath).serializer(serializer).build();
        discovery.start();
        if (mode.equals("register")) {
            Map<String, String> payload = new LinkedHashMap<>();
            for (int i = 7; i < args.length; i++) {
                String[] kv = args[i].split("=", 2);
                payload.put(kv[0], kv[1]);
            }
            ServiceInstance<Map> instance = ServiceInstance.<Map>builder()
                    .name(name).id(args[4]).address(args[5]).port(Integer.parseInt(args[6]))
                    .payload(payload).uriSpec(new UriSpec("{scheme}://{address}:{port}")).build();
            discovery.registerService(instance);
            System.out.println("registered");
            System.out.flush();
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            while (in.readLine() != null) { }
            discovery.unregisterService(instance);
        } else {
            for (ServiceInstance<Map> instance : discovery.queryForInstances(name)) {
                System.out.println(new String(serializer.serialize(instance), StandardCharsets.UTF_8));
            }
        }
        discovery.close();
        client.close();
    }
}
