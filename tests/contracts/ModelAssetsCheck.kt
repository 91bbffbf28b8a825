// Runs the generated ModelAssets.install against the test doubles of Context/AssetManager.
// Usage: java -cp ... ModelAssetsCheckKt <assets root> <external files dir> <model_id>
import android.content.Context
import ai.mcpm.assets.ModelAssets
import java.io.File

fun main(args: Array<String>) {
    val context = Context(File(args[1]), File(args[0]))
    println(ModelAssets.install(context, args[2]).path)
}
