// A real Apache Curator x-discovery client (Debian libcurator-discovery-java), run by
// leasehold-testkit as an interoperability peer: `register` holds one instance until its
// standard input closes; `query` prints every instance of a service as Curator serializes it;
// `bench` times registerService for many instances, one at a time or many in flight.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.ArrayList;
import java.util.List;
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
        } else if (mode.equals("bench")) {
            int count = Integer.parseInt(args[4]);
            int inFlight = Integer.parseInt(args[5]);
            int warmup = Integer.parseInt(args[6]);
            ExecutorService pool = Executors.newFixedThreadPool(inFlight);
            bench(discovery, pool, name + "-warmup", warmup, inFlight);
            long nanos = bench(discovery, pool, name, count, inFlight);
            System.out.println("bench count=" + count + " inflight=" + inFlight + " nanos=" + nanos);
            System.out.flush();
            pool.shutdown();
        } else {
            for (ServiceInstance<Map> instance : discovery.queryForInstances(name)) {
                System.out.println(new String(serializer.serialize(instance), StandardCharsets.UTF_8));
            }
        }
        discovery.close();
        client.close();
    }

    /** Registers `count` instances of `name`, `inFlight` at a time; returns the nanoseconds taken. */
    @SuppressWarnings({"unchecked", "rawtypes"})
    static long bench(ServiceDiscovery<Map> discovery, ExecutorService pool, String name, int count, int inFlight)
            throws Exception {
        List<ServiceInstance<Map>> instances = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            instances.add(ServiceInstance.<Map>builder().name(name).id("i" + i).address("127.0.0.1")
                    .port(7000 + (i % 1000)).payload(new LinkedHashMap<String, String>())
                    .uriSpec(new UriSpec("{scheme}://{address}:{port}")).build());
        }
        long start = System.nanoTime();
        if (inFlight <= 1) {
            for (ServiceInstance<Map> instance : instances) {
                discovery.registerService(instance);
            }
        } else {
            List<Future<?>> done = new ArrayList<>();
            for (ServiceInstance<Map> instance : instances) {
                done.add(pool.submit(() -> { discovery.registerService(instance); return null; }));
            }
            for (Future<?> f : done) {
                f.get();
            }
        }
        return System.nanoTime() - start;
    }
}
